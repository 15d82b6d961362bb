"""Fixtures shared by the scenarios' testinfra verifiers (pytest loads this file for every scenario).

``node`` runs commands in the node container with ``podman exec``: testinfra's ansible backend would
run one Ansible task per command. ``module`` runs a collection module through ad-hoc ``ansible``
with the json callback: with ansible-core 2.19 the result that ``host.ansible`` reads carries
neither ``failed`` nor ``warnings``, which the tests assert. ``probe`` sends real connections with
the lab tool and returns one answer per connection ("<source the server saw> <label>", or
"timeout"/"refused"). ``forget``, ``boot`` and ``ruleset`` simulate a reboot of a node (no systemd runs in the
containers): what it takes away, what the collection's boot path brings back, and the listing to compare.
"""
import json
import os
import re
import subprocess

import pytest
import testinfra


# The boot path the roles install (roles/persist) and the sysctl.d file of the forwarding module.
BOOT_UNIT = "/etc/systemd/system/nodenet-nat.service"
BOOT_LOADER = "/usr/local/sbin/nodenet-nat-restore"
BOOT_SYSCTL_FILE = "/etc/sysctl.d/90-nodenet-nat.conf"
PERSISTED_FILES = ("/etc/nftables.d/nodenet-nat.nft", "/etc/iptables/nodenet-nat.rules", "/etc/iptables/nodenet-nat.rules6")
# The listing of a backend's whole ruleset without counters.
RULESET_COMMANDS = {
    "nft": "nft -s list ruleset",
    "iptables": "iptables-nft -w -t nat -S && ip6tables-nft -w -t nat -S",
    "iptables-legacy": "iptables-legacy -w -t nat -S && ip6tables-legacy -w -t nat -S",
}
# What a reboot takes from the ruleset: everything nft holds (nft and iptables-nft), the legacy nat tables.
FORGET_COMMANDS = {
    "nft": "nft flush ruleset",
    "iptables": "nft flush ruleset",
    "iptables-legacy": "for tool in iptables-legacy ip6tables-legacy; do $tool -w -t nat -F && $tool -w -t nat -X; done",
}


class ModuleFailed(Exception):
    def __init__(self, result):
        super().__init__(result.get("msg"))
        self.result = result


def podman_host(name):
    """The testinfra host of the container ``name``, through ``podman exec``."""
    return testinfra.get_host("podman://" + name)


def run_module(name, module_name, params, check_failed=True):
    """The result of ``module_name`` with ``params`` (a dict) on inventory host ``name``.

    Raises ModuleFailed when the module fails, unless ``check_failed`` is false.
    """
    # auto_silent: the only warnings left are the module's own.
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_PYTHON_INTERPRETER="auto_silent")
    argv = ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], name, "-m", module_name, "-a", json.dumps(params)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=300)
    result = json.loads(out.stdout)["plays"][0]["tasks"][0]["hosts"][name]
    if check_failed and result.get("failed"):
        raise ModuleFailed(result)
    return result


def run_playbook(playbook, *args, timeout=None, env=None):
    """stdout of ``ansible-playbook ARGS PLAYBOOK`` on the scenario's inventory (``env``: more environment variables);
    a failed run fails the test with its output."""
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"]] + list(args) + [playbook]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def lab_probe(node, namespace, address, port=8080, count=1, timeout=2, udp=False, source_port=None):
    """Answers to ``count`` connections from ``namespace`` to ``address``:``port``, one per connection
    (each from ``source_port`` when given)."""
    command = "lab.py probe %s %s %s --count %s --timeout %s" + (" --udp" if udp else "")
    arguments = [namespace, address, str(port), str(count), str(timeout)]
    if source_port is not None:
        command += " --source-port %s"
        arguments.append(str(source_port))
    return node.check_output(command, *arguments).splitlines()


def forget_state(node, backend):
    """What a reboot takes: the backend's ruleset and the forwarding keys (back to the kernel's default, off)."""
    node.check_output(FORGET_COMMANDS[backend] + " && sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0")


def boot_path(node):
    """What boot does for the collection: systemd-sysctl applies its sysctl.d file, then nodenet-nat.service runs
    its ExecStart (the exact command). Returns the loader's output."""
    exec_start = re.search(r"^ExecStart=(.*)$", node.file(BOOT_UNIT).content_string, re.MULTILINE).group(1)
    node.check_output("sysctl -q -p %s", BOOT_SYSCTL_FILE)
    return node.check_output(exec_start)


def ruleset(node, backend):
    return node.check_output(RULESET_COMMANDS[backend])


@pytest.fixture(name="forget", scope="session")
def fixture_forget():
    """forget(NODE, BACKEND): forget_state."""
    return forget_state


@pytest.fixture(name="boot", scope="session")
def fixture_boot():
    """boot(NODE): boot_path."""
    return boot_path


@pytest.fixture(name="ruleset", scope="session")
def fixture_ruleset():
    """ruleset(NODE, BACKEND): the backend's ruleset without counters."""
    return ruleset


@pytest.fixture(name="boot_files", scope="session")
def fixture_boot_files():
    """{what: path} of the boot path the roles install: unit, loader, and the persisted rules of each backend."""
    return dict(unit=BOOT_UNIT, loader=BOOT_LOADER, nft=PERSISTED_FILES[0], iptables=PERSISTED_FILES[1], iptables6=PERSISTED_FILES[2])


@pytest.fixture(name="node", scope="module")
def fixture_node(host):
    return podman_host(host.backend.get_hostname())


@pytest.fixture(name="module", scope="module")
def fixture_module(host):
    name = host.backend.get_hostname()
    return lambda module_name, params, check_failed=True: run_module(name, module_name, params, check_failed)


@pytest.fixture(name="backend", scope="module")
def fixture_backend(host):
    """The backend the node's host vars name (nodenet_nat_backend)."""
    return host.ansible.get_variables()["nodenet_nat_backend"]


@pytest.fixture(name="probe", scope="session")
def fixture_probe():
    return lab_probe


@pytest.fixture(name="node_named", scope="session")
def fixture_node_named():
    """node_named(NAME): the node container NAME, for tests that address several nodes by name."""
    return podman_host


@pytest.fixture(name="module_named", scope="session")
def fixture_module_named():
    """module_named(NAME, MODULE, PARAMS): ``module`` for the node NAME."""
    return run_module


@pytest.fixture(name="probes", scope="module")
def fixture_probes(node, probe, request):
    """{target: [answer, ...]}: COUNT connections (default 2, TIMEOUT default 2 s) to each of the test module's
    TARGETS, each (namespace, address) or (namespace, address, port)."""
    count, timeout = getattr(request.module, "COUNT", 2), getattr(request.module, "TIMEOUT", 2)
    return dict((target, probe(node, *target, count=count, timeout=timeout)) for target in request.module.TARGETS)


@pytest.fixture(name="playbook", scope="session")
def fixture_playbook():
    """playbook(PATH, *ARGS, timeout=None): run_playbook."""
    return run_playbook
