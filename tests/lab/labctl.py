#!/usr/bin/env python
"""The embedded lab: three NAT nodes (one per netfilter back end), an external client and an upstream
"internet" host, as podman containers wired together with veth pairs, converged by playbooks/site.yml and
checked with real packets. The lab stays up for diagnose.yml, remove.yml and your own playbooks.

  labctl.py up      (make lab)        start from nothing, write lab/inventory, run site.yml twice, check
  labctl.py check   (make lab-check)  send the packets again and print the report
  labctl.py down    (make lab-down)   remove every lab container and lab/

Every container starts with --network none and every link, bridge, route and namespace lives inside the
containers' network namespaces: this machine's forwarding, ruleset and routes are never touched, and no
packet leaves the containers. Removing the containers removes the whole topology.

    client 198.51.100.2                                    upstream 203.0.113.2 (no route to any pod)
        |                                                        |
    [switch container: bridge "lan" 198.51.100.0/24]       [bridge "wan" 203.0.113.0/24]
        |                                                        |
    node nodenet-lab-nft       lan .11  wan .11  cni0 10.244.1.1/24  pod-nft      10.244.1.10:8080
    node nodenet-lab-iptables  lan .12  wan .12  cni0 10.244.2.1/24  pod-iptables 10.244.2.10:8080
    node nodenet-lab-legacy    lan .13  wan .13  cni0 10.244.3.1/24  pod-legacy   10.244.3.10:8080
    Each node routes the other nodes' pod CIDRs via their lan address. Every server answers
    "<source address it saw> <its name>".
"""
import argparse
import collections
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_DIR = os.path.join(ROOT, "lab")
INVENTORY = os.path.join(LAB_DIR, "inventory")
LAB_TOOL = os.path.join(ROOT, "tests", "lab", "lab.py")
IMAGE = os.environ.get("NODENET_LAB_IMAGE", "localhost/nodenet-nat-node:bookworm-2")
LABEL = "nodenet.lab"
PREFIX = "nodenet-lab-"
SWITCH = PREFIX + "switch"
CLIENT = PREFIX + "client"
UPSTREAM = PREFIX + "upstream"
CLIENT_IP = "198.51.100.2"
UPSTREAM_IP = "203.0.113.2"
PORT = 8080
WEB_PORT = 30080
WEB_IP = "10.96.0.10"
SELF_PORT = 30081
NODEPORT_PROBES = 30


class Node(object):
    def __init__(self, index, short, backend):
        self.index = index
        self.short = short  # in names, which become interface names (at most 15 characters)
        self.backend = backend
        self.name = PREFIX + short
        self.lan = "198.51.100.1%d" % index
        self.wan = "203.0.113.1%d" % index
        self.pod_cidr = "10.244.%d.0/24" % index
        self.gateway = "10.244.%d.1" % index
        self.pod = "pod-" + short
        self.pod_ip = "10.244.%d.10" % index
        self.self_ip = "10.96.0.1%d" % index  # cluster IP of the service whose only backend is this node's pod

    def __str__(self):
        return "%s (%s)" % (self.name, self.backend)


NODES = [Node(1, "nft", "nft"), Node(2, "iptables", "iptables"), Node(3, "legacy", "iptables-legacy")]
CONTAINERS = [SWITCH, CLIENT, UPSTREAM] + [node.name for node in NODES]


def say(message):
    print("%s  %s" % (time.strftime("%H:%M:%S"), message), flush=True)


def run(*argv, **kwargs):
    """Run ARGV; on failure show its output and raise."""
    result = subprocess.run(argv, text=True, capture_output=True, check=False, **kwargs)
    if result.returncode != 0:
        raise LabError("%s failed (exit %d):\n%s%s" % (" ".join(argv), result.returncode, result.stdout, result.stderr))
    return result.stdout


def podman(*args):
    return run("podman", *args)


def shell(container, *commands):
    """Run COMMANDS (one per item) in CONTAINER with `sh -e`."""
    return podman("exec", container, "sh", "-ec", "\n".join(commands))


class LabError(Exception):
    pass


# -- up / down -------------------------------------------------------------------------------------

def lab_containers():
    names = podman("ps", "--all", "--filter", "label=" + LABEL, "--format", "{{.Names}}").split()
    return sorted(set(names) | {name for name in CONTAINERS if subprocess.run(
        ["podman", "container", "exists", name], check=False).returncode == 0})


def down(quiet=False):
    names = lab_containers()
    if names:
        if not quiet:
            say("removing %d containers: %s" % (len(names), " ".join(names)))
        podman("rm", "--force", "--time", "0", *names)
    elif not quiet:
        say("no lab containers")
    if os.path.isdir(LAB_DIR):
        shutil.rmtree(LAB_DIR)
        if not quiet:
            say("removed lab/")


def start_containers():
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        raise LabError("image %s is missing: run make image (make lab does)" % IMAGE)
    for name in CONTAINERS:
        podman("run", "--detach", "--name", name, "--hostname", name, "--label", LABEL + "=1",
               "--privileged", "--network", "none", IMAGE, "sleep", "infinity")
    for name in CONTAINERS:
        if name != SWITCH:
            podman("cp", LAB_TOOL, name + ":/usr/local/bin/lab.py")


def wire():
    """veth pairs made directly inside the containers' namespaces: nothing is created in this machine's."""
    pids = dict(zip(CONTAINERS, podman("inspect", "--format", "{{.State.Pid}}", *CONTAINERS).split()))
    ports = {"lan": [], "wan": []}
    legs = [(CLIENT, "lan", "lan-client"), (UPSTREAM, "wan", "wan-upstream")]
    for node in NODES:
        legs += [(node.name, "lan", "lan-" + node.short), (node.name, "wan", "wan-" + node.short)]
    for container, bridge, port in legs:
        run("ip", "link", "add", port, "netns", pids[SWITCH], "type", "veth",
            "peer", "name", bridge, "netns", pids[container])
        ports[bridge].append(port)
    shell(SWITCH,
          "ip link add lan type bridge", "ip link add wan type bridge", "ip link set lan up", "ip link set wan up",
          *["ip link set %s master %s up" % (port, bridge) for bridge in ports for port in ports[bridge]])


def build_hosts():
    shell(CLIENT, "ip addr add %s/24 dev lan" % CLIENT_IP, "ip link set lan up")
    shell(UPSTREAM, "ip addr add %s/24 dev wan" % UPSTREAM_IP, "ip link set wan up",
          "lab.py serve - %d upstream" % PORT)

    def build(node):
        shell(node.name,
              "sysctl -qw net.ipv4.ip_forward=0",
              "ip addr add %s/24 dev lan" % node.lan, "ip link set lan up",
              "ip addr add %s/24 dev wan" % node.wan, "ip link set wan up",
              *["ip route add %s via %s" % (other.pod_cidr, other.lan) for other in NODES if other is not node],
              "lab.py bridge cni0 %s/24" % node.gateway,
              "lab.py pod %s cni0 %s/24 %s" % (node.pod, node.pod_ip, node.gateway),
              "lab.py serve %s %d %s" % (node.pod, PORT, node.pod))
    parallel(build, NODES)


def write_yaml(path, comment, data):
    import yaml  # only `up` needs it (the project's .venv has it); `down` runs with any python3
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as stream:
        stream.write("".join("# %s\n" % line for line in comment.splitlines()) + "---\n")
        yaml.safe_dump(data, stream, default_flow_style=False, sort_keys=False, width=120)


def write_inventory():
    hosts = {node.name: None for node in NODES}
    write_yaml(os.path.join(INVENTORY, "hosts.yml"),
               "The lab's nodes (written by tests/lab/labctl.py; make lab-down removes it). Every node is in\n"
               "every group of playbooks/site.yml. The client, upstream and switch containers are not managed.",
               {"all": {"children": {group: {"hosts": hosts} for group in (
                   "nodenet_nat_routers", "nodenet_nat_egress", "nodenet_nat_nodeport", "nodenet_nat_hairpin")}}})
    write_yaml(os.path.join(INVENTORY, "group_vars", "all.yml"),
               "Ansible reaches the nodes with podman exec; they run as root and have no sudo.",
               {"ansible_connection": "containers.podman.podman",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_become": False})
    write_yaml(os.path.join(INVENTORY, "group_vars", "nodenet_nat_egress.yml"),
               "Pods leave their node as the node; traffic between the cluster's pods keeps its source.",
               {"node_egress_pod_cidrs": ["10.244.0.0/16"]})
    write_yaml(os.path.join(INVENTORY, "group_vars", "nodenet_nat_hairpin.yml"),
               "Pods reach themselves through their services over the node's pod bridge.",
               {"hairpin_bridge": "cni0", "hairpin_mode": "hairpin-veth"})
    for node in NODES:
        write_yaml(os.path.join(INVENTORY, "host_vars", node.name + ".yml"),
                   "%s: netfilter back end, its pod CIDR and its NodePort services.\n"
                   "web: every node answers on %d and balances over the pods of all three nodes.\n"
                   "self-%s: this node's pod is the only backend, for the hairpin check." % (
                       node.name, WEB_PORT, node.short),
                   {"nodenet_nat_backend": node.backend,
                    "nodeport_pod_cidrs": [node.pod_cidr],
                    "hairpin_pod_cidrs": [node.pod_cidr],
                    "nodeport_services": [
                        {"name": "web", "port": WEB_PORT, "cluster_ip": WEB_IP,
                         "backends": [{"address": other.pod_ip, "port": PORT} for other in NODES]},
                        {"name": "self-" + node.short, "port": SELF_PORT, "cluster_ip": node.self_ip,
                         "backends": [{"address": node.pod_ip, "port": PORT}]}]})
    with open(os.path.join(LAB_DIR, "env"), "w") as env:
        env.write("# source lab/env: ansible-playbook, the collection and podman's settings for this lab\n"
                  "export PATH=%s:$PATH\n" % os.path.join(ROOT, ".venv", "bin") +
                  "export ANSIBLE_COLLECTIONS_PATH=%s\n" % os.path.join(ROOT, ".collections") +
                  "export CONTAINERS_CONF=%s\n" % os.path.join(ROOT, "tests", "lab", "containers.conf") +
                  "export ANSIBLE_INVENTORY=%s\n" % INVENTORY)


def ansible_env():
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(ROOT, ".collections"))
    env["PATH"] = os.path.join(ROOT, ".venv", "bin") + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def site(log_name):
    """Run site.yml on the lab, one progress line per play and task; return {host: recap counters}."""
    log_path = os.path.join(LAB_DIR, log_name)
    argv = ["ansible-playbook", "-i", INVENTORY, os.path.join(ROOT, "playbooks", "site.yml")]
    recap = {}
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=ansible_env(), cwd=ROOT)
        in_recap = False
        for line in process.stdout:
            log.write(line)
            if line.startswith(("PLAY [", "TASK [")):
                say("    " + line.rstrip(" *\n"))
            elif line.startswith("PLAY RECAP"):
                in_recap = True
            elif in_recap and ":" in line:
                host, counters = line.split(":", 1)
                recap[host.strip()] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counters)}
        status = process.wait()
    say("    log: %s" % os.path.relpath(log_path, ROOT))
    if status != 0:
        with open(log_path) as log:
            print(log.read()[-6000:])
        raise LabError("%s exited %d" % (" ".join(argv), status))
    return recap


# -- packets ---------------------------------------------------------------------------------------

def parallel(function, items):
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))


def probe(container, namespace, address, port, count=1, timeout=1.0):
    """Connect COUNT times from NAMESPACE in CONTAINER; one answer per connection ("timeout", "refused", ...)."""
    output = podman("exec", container, "lab.py", "probe", namespace, address, str(port),
                    "--count", str(count), "--timeout", str(timeout))
    return output.split("\n")[:count]


def answered(answers):
    """(source, label) pairs of the answers that came, and the list of failures."""
    pairs = [tuple(answer.split(" ", 1)) for answer in answers if answer.count(" ") == 1 and "." in answer]
    failures = [answer for answer in answers if answer.count(" ") != 1 or "." not in answer]
    return pairs, failures


def summarize(answers):
    counts = collections.Counter(answers)
    return ", ".join("%s x%d" % (answer, n) if n > 1 else answer for answer, n in sorted(counts.items()))


class Check(object):
    """One line of the report: what was sent, what the far end saw, what that proves."""

    def __init__(self, kind, node, sent, probe_args=None):
        self.kind, self.node, self.sent, self.probe_args = kind, node, sent, probe_args
        self.ok, self.saw, self.proves, self.before = False, "", "", None

    def line(self):
        backend = self.node.backend if self.node else "all nodes"
        before = " | before site.yml: %s" % self.before if self.before is not None else ""
        return "%s  %-10s %-15s %s | %s | %s%s" % (
            "PASS" if self.ok else "FAIL", self.kind, backend, self.sent, self.saw, self.proves, before)


def next_node(node):
    return NODES[(NODES.index(node) + 1) % len(NODES)]


def checks():
    """The packet checks, each with the probe that runs it: (container, namespace, address, port, count)."""
    result = []
    for node in NODES:
        other = next_node(node)
        result += [
            Check("egress", node, "%s %s -> upstream %s:%d" % (node.pod, node.pod_ip, UPSTREAM_IP, PORT),
                  (node.name, node.pod, UPSTREAM_IP, PORT, 1)),
            Check("pod-pod", node, "%s %s -> %s %s:%d" % (node.pod, node.pod_ip, other.pod, other.pod_ip, PORT),
                  (node.name, node.pod, other.pod_ip, PORT, 1)),
            Check("nodeport", node, "client %s -> %s:%d x%d" % (CLIENT_IP, node.lan, WEB_PORT, NODEPORT_PROBES),
                  (CLIENT, "-", node.lan, WEB_PORT, NODEPORT_PROBES)),
            Check("hairpin", node, "%s %s -> its own service %s:%d x3" % (node.pod, node.pod_ip, node.self_ip,
                                                                          SELF_PORT),
                  (node.name, node.pod, node.self_ip, SELF_PORT, 3)),
        ]
    return result


def judge(check, answers):
    node = check.node
    pairs, failures = answered(answers)
    sources = sorted({source for source, label in pairs})
    no_answer = "no answer (%s)" % summarize(failures)
    if check.kind == "egress":
        check.ok = not failures and sources == [node.wan]
        check.saw = no_answer if failures else "upstream saw %s" % " ".join(sources)
        check.proves = ("pod egress is masqueraded to the node's address" if check.ok
                        else "expected the node's address %s" % node.wan)
    elif check.kind == "pod-pod":
        check.ok = not failures and sources == [node.pod_ip]
        check.saw = no_answer if failures else "%s saw %s" % (next_node(node).pod, " ".join(sources))
        check.proves = ("pods keep their address between nodes (egress exemption, routes between nodes)" if check.ok
                        else "expected the pod's own address %s" % node.pod_ip)
    elif check.kind == "nodeport":
        labels = collections.Counter(label for source, label in pairs)
        node_addresses = {node.lan, node.gateway}
        check.ok = (not failures and set(labels) == {other.pod for other in NODES}
                    and set(sources) <= node_addresses)
        check.saw = "%s; the pods saw %s%s" % (
            ", ".join("%s x%d" % (label, n) for label, n in sorted(labels.items())) or "no pod answered",
            ", ".join(sources) or "nothing", "; " + no_answer if failures else "")
        check.proves = ("balanced over the pods of all 3 nodes; the client is masqueraded (Cluster policy)"
                        if check.ok else "expected all 3 pods to answer, each seeing %s" % " or ".join(
                            sorted(node_addresses)))
    elif check.kind == "hairpin":
        labels = {label for source, label in pairs}
        check.ok = not failures and labels == {node.pod}
        check.saw = no_answer if failures else "answers %s" % summarize(answers)
        check.proves = ("a pod reaches itself through its service (hairpin mode, masqueraded to the bridge)"
                        if check.ok else "expected every answer from %s itself" % node.pod)
    return check


# Owned rules per netfilter front end on a node: lines of the nft table, NODENET- rules in each iptables.
FRONT_ENDS = ("nft", "iptables", "iptables-legacy")
COUNT_OWNED = ("nft list table ip nodenet_nat 2>/dev/null | grep -c .; "
               "iptables-nft-save -t nat 2>/dev/null | grep -c '^-A NODENET'; "
               "iptables-legacy-save -t nat 2>/dev/null | grep -c '^-A NODENET'; true")


def backend_check(node):
    check = Check("backend", node, "site.yml with nodenet_nat_backend=%s" % node.backend)
    counts = dict(zip(FRONT_ENDS, (int(n) for n in podman("exec", node.name, "sh", "-c", COUNT_OWNED).split())))
    check.ok = counts[node.backend] > 0 and not any(counts[other] for other in FRONT_ENDS if other != node.backend)
    check.saw = "owned: nft table ip nodenet_nat %d lines, iptables-nft %d NODENET rules, iptables-legacy %d" % (
        counts["nft"], counts["iptables"], counts["iptables-legacy"])
    check.proves = ("the node's rules live in its back end only" if check.ok
                    else "expected owned rules in %s only" % node.backend)
    return check


def run_checks(before=None):
    plan = checks()
    answers = parallel(lambda check: probe(*check.probe_args), plan)
    for check, got in zip(plan, answers):
        judge(check, got)
        if before is not None:
            check.before = before.get((check.kind, check.node.name))
    return plan + parallel(backend_check, NODES)


def probe_before():
    """One connection per check before site.yml, to show what the collection changed."""
    plan = checks()
    answers = parallel(lambda check: probe(*check.probe_args[:4], count=1, timeout=1.0), plan)
    return {(check.kind, check.node.name): summarize(got) for check, got in zip(plan, answers)}


def idempotence_check(recap):
    check = Check("idempotent", None, "site.yml a second time")
    changed = {host: counters.get("changed", 0) for host, counters in recap.items()}
    check.ok = bool(changed) and not any(changed.values())
    check.saw = ", ".join("%s changed=%d" % (host, n) for host, n in sorted(changed.items()))
    check.proves = "converging again changes nothing" if check.ok else "expected changed=0 on every node"
    return check


def report(plan):
    print()
    print("== Lab report: real packets through the nodes after site.yml. Every server answers with the source")
    print("   address it saw and its name. Each line: result, check, the node's back end, what was sent |")
    print("   what the far end saw | what that proves | the same probe before site.yml.")
    for check in plan:
        print(check.line())
    failed = sum(not check.ok for check in plan)
    print("lab checks: %d passed, %d failed" % (len(plan) - failed, failed))
    return failed


def epilogue():
    print("""
The lab stays up. Its inventory is lab/inventory; `source lab/env` puts ansible-playbook, the collection
and the inventory in your shell, then:
  ansible-playbook playbooks/diagnose.yml          # the NAT checklist, one line per node
  ansible-playbook playbooks/remove.yml            # remove everything nodenet.nat owns (make lab-check fails then)
  ansible-playbook playbooks/site.yml              # converge again
  podman exec -it nodenet-lab-nft bash             # look around a node (nft list ruleset, conntrack -L)
  make lab-check                                   # send the packets again
  make lab-down                                    # remove every lab container and lab/""")


def cmd_up(_args):
    steps = ["removing an earlier lab", "starting 6 containers (3 nodes, client, upstream, switch), network none",
             "wiring: veth pairs into the switch's lan and wan bridges",
             "pods, servers and routes inside the nodes", "writing lab/inventory",
             "packets before site.yml", "site.yml", "site.yml again (must change nothing)", "packets after site.yml"]
    started = time.time()

    def step(number):
        say("[%d/%d] %s" % (number, len(steps), steps[number - 1]))

    try:
        step(1)
        down(quiet=True)
        step(2)
        start_containers()
        step(3)
        wire()
        step(4)
        build_hosts()
        step(5)
        write_inventory()
        step(6)
        before = probe_before()
    except (LabError, KeyboardInterrupt) as error:
        print(error, file=sys.stderr)
        say("the lab did not come up: removing it")
        down()
        return 1
    # From here on the lab stays up, also when something fails: it is there to be looked at.
    try:
        step(7)
        site("site.log")
        step(8)
        recap = site("site-again.log")
        step(9)
        plan = run_checks(before) + [idempotence_check(recap)]
    except LabError as error:
        print(error, file=sys.stderr)
        say("the lab is left up for inspection (inventory lab/inventory); make lab-down removes it")
        return 1
    failed = report(plan)
    say("lab up in %d s" % (time.time() - started))
    epilogue()
    return 1 if failed else 0


def cmd_check(_args):
    if not os.path.isdir(INVENTORY):
        print("no lab: make lab starts one", file=sys.stderr)
        return 1
    return 1 if report(run_checks()) else 0


def cmd_down(_args):
    down()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, function in (("up", cmd_up), ("check", cmd_check), ("down", cmd_down)):
        commands.add_parser(name).set_defaults(func=function)
    args = parser.parse_args()
    os.environ.setdefault("CONTAINERS_CONF", os.path.join(ROOT, "tests", "lab", "containers.conf"))
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
