"""rollback_timeout over a real management path.

The scenario's nodes are reached with podman exec, which no NAT rule can cut. So this test builds a management path that
a rule can cut: a network namespace on this machine (held by an ``unshare`` process, nothing added to this machine's own
network) wired to each node with a veth pair made directly inside the two namespaces, and sshd on each node. It runs
ansible-playbook from that namespace with the ssh connection (ControlPersist, as ansible's defaults have it) on
molecule/rollback/ssh.yml:

1. a harmless change with rollback_timeout is confirmed over a new connection and kept;
2. a change that DNATs ssh arriving on the management link to a black hole: while it is in place a new ssh connection
   from the management namespace times out (checked here), the controller cannot confirm, and each node puts its
   previous owned rules back at the deadline by itself; the controller's next attempt gets through and reports it;
3. a new ssh connection gathers the owned rules: exactly those of step 1.

Everything it creates (namespace, veth pairs, sshd, keys, ssh masters) is removed when it ends, passed or failed.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import testinfra
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIO = os.path.dirname(HERE)
with open(os.path.join(SCENARIO, "vars", "rules.yml")) as rules_file:
    RULES = yaml.safe_load(rules_file)
# name: (backend, index of its management link: 198.51.100.4*index + 1 here, + 2 on the node)
NODES = {"nodenet-nat-rollback-nft": ("nft", 0), "nodenet-nat-rollback-legacy": ("iptables-legacy", 1)}
LISTINGS = {"nft": "nft list table ip nodenet_nat", "iptables-legacy": "iptables-legacy-save -t nat"}
CUT_TIMEOUT = 8
SSH_TIMEOUT = 4
SSHD_PID = "/run/nodenet-rollback-sshd.pid"


def run(*argv, check=True, **kwargs):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kwargs)


def node_address(index):
    return "198.51.100.%d" % (4 * index + 2)


class Management(object):
    """The management namespace (its holder process), the ssh key and the ansible inventory for it."""

    def __init__(self, work):
        self.work = work
        self.holder = None
        self.key = os.path.join(work, "id_ed25519")
        self.control_dir = os.path.join(work, "cp")
        self.inventory = os.path.join(work, "inventory.yml")

    def netns(self, *argv):
        return ["nsenter", "--net=/proc/%d/ns/net" % self.holder.pid, "--"] + list(argv)

    def ssh_argv(self, address, timeout):
        """A plain new ssh connection (no master) from the management namespace."""
        return self.netns("ssh", "-i", self.key, "-o", "BatchMode=yes", "-o", "ControlPath=none", "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=%d" % timeout, "root@" + address, "true")

    def ssh(self, address, timeout):
        """(rc, stderr) of ssh_argv."""
        done = run(*self.ssh_argv(address, timeout), check=False, timeout=timeout + 10)
        return done.returncode, done.stderr

    def playbook(self):
        """ansible-playbook ssh.yml from the management namespace, started (the json callback's output on stdout)."""
        env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_SSH_CONTROL_PATH_DIR=self.control_dir, ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3", ANSIBLE_TIMEOUT=str(SSH_TIMEOUT))
        argv = self.netns("ansible-playbook", "-i", self.inventory, "-e", "rollback_cut_timeout=%d" % CUT_TIMEOUT,
                          os.path.join(SCENARIO, "ssh.yml"))
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def podman(*argv, **kwargs):
    return run("podman", *argv, **kwargs)


def node_shell(name):
    return testinfra.get_host("podman://" + name)


@pytest.fixture(scope="module")
def management(tmp_path_factory):
    if not shutil.which("ssh"):
        pytest.fail("the ssh client is needed (Debian package openssh-client; make packages installs it)")
    work = str(tmp_path_factory.mktemp("mgmt"))
    path = Management(work)
    path.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep infinity"], stdout=subprocess.PIPE, text=True)
    try:
        assert path.holder.stdout.readline() == "ready\n"
        run(*path.netns("ip", "link", "set", "lo", "up"))
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nodenet-rollback-test", "-f", path.key)
        with open(path.key + ".pub") as public:
            public_key = public.read()
        hosts = {}
        for name, (backend, index) in sorted(NODES.items()):
            pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
            # Both ends made directly in their namespaces: nothing appears in this machine's own.
            run("ip", "link", "add", "m%d" % index, "netns", str(path.holder.pid), "type", "veth", "peer", "name", "mgmt0", "netns", pid)
            run(*path.netns("ip", "addr", "add", "198.51.100.%d/30" % (4 * index + 1), "dev", "m%d" % index))
            run(*path.netns("ip", "link", "set", "m%d" % index, "up"))
            podman("exec", name, "ip", "addr", "add", node_address(index) + "/30", "dev", "mgmt0")
            podman("exec", name, "ip", "link", "set", "mgmt0", "up")
            podman("exec", name, "sh", "-c", "ssh-keygen -A && mkdir -p -m 0700 /root/.ssh /run/sshd")
            podman("exec", "-i", name, "sh", "-c", "cat > /root/.ssh/authorized_keys && chmod 0600 /root/.ssh/authorized_keys", input=public_key)
            podman("exec", name, "/usr/sbin/sshd", "-o", "PidFile=" + SSHD_PID, "-o", "ListenAddress=" + node_address(index))
            hosts[name] = dict(ansible_host=node_address(index), nodenet_nat_backend=backend)
        with open(path.inventory, "w") as inventory:
            yaml.safe_dump({"all": {"hosts": hosts, "vars": dict(
                ansible_connection="ssh", ansible_user="root", ansible_ssh_private_key_file=path.key,
                ansible_ssh_common_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")}}, inventory)
        for name, (backend, index) in NODES.items():
            # The sshd just started may not answer yet (CI once saw rc 255 at once): up to 10 s for a first answer.
            deadline = time.monotonic() + 10
            rc, err = path.ssh(node_address(index), SSH_TIMEOUT)
            while rc != 0 and time.monotonic() < deadline:
                time.sleep(0.5)
                rc, err = path.ssh(node_address(index), SSH_TIMEOUT)
            assert rc == 0, "no ssh to %s before any change: %s" % (name, err.strip())
        yield path
    finally:
        # ssh masters (ControlPersist) that ansible left in the namespace
        if os.path.isdir(path.control_dir):
            for socket in os.listdir(path.control_dir):
                run("ssh", "-o", "ControlPath=" + os.path.join(path.control_dir, socket), "-O", "exit", "nodenet-rollback", check=False)
        for name, (backend, index) in NODES.items():
            podman("exec", name, "sh", "-c", "test -f %s && kill $(cat %s); rm -f /root/.ssh/authorized_keys; ip link del mgmt0"
                   % (SSHD_PID, SSHD_PID), check=False)
        path.holder.send_signal(signal.SIGKILL)
        path.holder.wait()
        path.holder.stdout.close()


def owned_listing(name):
    return node_shell(name).check_output(LISTINGS[NODES[name][0]])


def cut_in_place(name):
    return "cut-ssh" in owned_listing(name)


def results(stdout):
    """{task name: {host: result}} of the json callback's output."""
    play = json.loads(stdout)["plays"][0]
    return dict((task["task"]["name"], task["hosts"]) for task in play["tasks"])


def test_a_cut_management_path_is_restored_by_the_nodes(management):
    started = time.monotonic()
    playbook = management.playbook()
    try:
        # While the cut is in place, a new ssh connection from the management namespace gets nowhere (a connection
        # attempt a second long, started as soon as the cut rule shows on the node, well before its deadline).
        probes = {}
        deadline = time.monotonic() + 120
        while len(probes) < len(NODES) and playbook.poll() is None and time.monotonic() < deadline:
            for name, (backend, index) in NODES.items():
                if name not in probes and cut_in_place(name):
                    probes[name] = subprocess.Popen(management.ssh_argv(node_address(index), 1), stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.PIPE, text=True)
            time.sleep(0.2)
        cut_seen = dict((name, (probe.wait(timeout=30), probe.communicate()[1])) for name, probe in probes.items())
        out, err = playbook.communicate(timeout=180)
    finally:
        for process in [playbook] + list(locals().get("probes", {}).values()):
            if process.poll() is None:
                process.kill()
                process.communicate()
    elapsed = time.monotonic() - started
    assert playbook.returncode == 0, out + err
    assert sorted(cut_seen) == sorted(NODES), "the cut was never seen in place on some node"
    for name, (rc, stderr) in cut_seen.items():
        assert rc == 255 and "timed out" in stderr, "%s: ssh got through while the cut was in place: %s" % (name, stderr)

    tasks = results(out)
    expected = sorted(rule["name"] for rule in RULES["rollback_rules"] + [RULES["rollback_harmless_rule"]])
    for name in NODES:
        harmless = tasks["A harmless change, confirmed over a new connection and kept"][name]
        assert harmless["changed"] is True and not harmless.get("failed"), harmless
        assert harmless["rollback"]["status"] == "confirmed" and harmless["rollback"]["attempts"] == 1, harmless["rollback"]

        cut = tasks["A change that sends the management connection's ssh to a black hole"][name]
        assert cut["failed"] is True and cut["changed"] is False, cut
        assert cut["rollback"]["status"] == "rolled_back", cut
        assert cut["rollback"]["restore"]["verified"] is True, cut["rollback"]
        # The first attempts found no way in; one after the node's deadline got through and read what it did.
        assert cut["rollback"]["attempts"] >= 2 and cut["rollback"]["waited"] >= CUT_TIMEOUT - 1, cut["rollback"]
        assert cut["summary"]["added"] == ["cut-ssh"]
        assert re.search(r"had no confirmation %d s after the change .* it put its previous owned NAT rules back$" % CUT_TIMEOUT,
                         cut["msg"]), cut["msg"]

        after = tasks["A new ssh connection reaches the node again; the owned rules are those from before the cut"][name]
        assert sorted(rule["name"] for rule in after["gathered"]) == expected, after

        # Seen from the node itself: no cut rule, no cookie or outcome left behind, nothing waits any more.
        assert not cut_in_place(name)
        assert node_shell(name).run("find /run/nodenet-nat -name 'rollback-*'").stdout == ""
    # Tens of seconds, not minutes: the rollback of both nodes took the timeout and a connection attempt or two.
    assert elapsed < 90, elapsed
    # And the management path works for a plain new connection too.
    for name, (backend, index) in NODES.items():
        assert management.ssh(node_address(index), SSH_TIMEOUT)[0] == 0, name
