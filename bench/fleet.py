#!/usr/bin/env python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How playbooks/site.yml scales over a fleet: wall time with F forks against ceil(H / F) x one node.

Starts H node containers (the lab image, ``--network none``, ``sleep infinity``; every profile of site.yml,
back ends nft / iptables-nft / iptables-legacy in turn, a pod bridge cni0 each), converges them with
``ansible-playbook -f F playbooks/site.yml``, then again to show it is idempotent (changed=0 on every host).
The reference is the same first converge on one fresh node: with perfect parallelism H hosts take
ceil(H / F) x that. Every run starts from fresh containers. All containers carry the label
nodenet.bench=fleet and are removed at the end, also on failure or Ctrl-C.

Prerequisites (root, Debian 12): ``make setup`` (Debian packages, .venv with ansible-core and
containers.podman, the .collections link, the node image). ``make bench-fleet`` runs it after them:

    make bench-fleet FLEET_HOSTS=24 FLEET_FORKS=2,6      # writes bench/FLEET.md
    .venv/bin/python bench/fleet.py --hosts 24 --forks 2,6 --output bench/FLEET.md

Nothing touches this machine's network: the containers have no network at all (the podman connection
runs modules with ``podman exec``).
"""
import argparse
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from machine import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.environ.get("NODENET_LAB_IMAGE", "localhost/nodenet-nat-node:bookworm-2")
LABEL = "nodenet.bench=fleet"
PREFIX = "nodenet-fleetbench-"
BACKENDS = ("nft", "iptables", "iptables-legacy")
GROUPS = ("nodenet_nat_routers", "nodenet_nat_egress", "nodenet_nat_nodeport", "nodenet_nat_hairpin")
# Every node: pods in 10.244.N.0/24, two NodePort services over pods of three nodes, hairpin on cni0.
GROUP_VARS = """---
ansible_connection: containers.podman.podman
ansible_python_interpreter: /usr/bin/python3
ansible_become: false
node_egress_pod_cidrs: [10.244.0.0/16]
hairpin_bridge: cni0
hairpin_pod_cidrs: [10.244.0.0/16]
nodeport_pod_cidrs: [10.244.0.0/16]
nodeport_services:
  - name: web
    port: 30080
    cluster_ip: 10.96.0.10
    backends: [{address: 10.244.1.10, port: 8080}, {address: 10.244.2.10, port: 8080}, {address: 10.244.3.10, port: 8080}]
  - name: dns
    port: 30053
    protocol: udp
    backends: [{address: 10.244.1.53, port: 53}, {address: 10.244.2.53, port: 53}]
"""


def say(message):
    print("%s  %s" % (time.strftime("%H:%M:%S"), message), flush=True)


def run(argv, **kwargs):
    result = subprocess.run(argv, text=True, capture_output=True, check=False, **kwargs)
    if result.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s%s" % (" ".join(argv[:6]), result.returncode, result.stdout[-3000:],
                                                  result.stderr[-3000:]))
    return result.stdout


def remove_all():
    names = run(["podman", "ps", "--all", "--filter", "label=" + LABEL, "--format", "{{.Names}}"]).split()
    if names:
        run(["podman", "rm", "--force", "--time", "0"] + names)
    return len(names)


def start_nodes(count):
    """Fresh nodes: remove the previous ones, start COUNT, give each a pod bridge."""
    remove_all()
    names = ["%s%02d" % (PREFIX, index) for index in range(1, count + 1)]
    for name in names:
        run(["podman", "run", "--detach", "--name", name, "--hostname", name, "--label", LABEL,
             "--privileged", "--network", "none", IMAGE, "sleep", "infinity"])
    processes = [subprocess.Popen(["podman", "exec", name, "sh", "-ec",
                                   "ip link add cni0 type bridge && ip link set cni0 up"]) for name in names]
    if any(process.wait() for process in processes):
        raise RuntimeError("could not add the pod bridge to every node")
    return names


def write_inventory(directory, names):
    os.makedirs(os.path.join(directory, "group_vars"), exist_ok=True)
    with open(os.path.join(directory, "group_vars", "all.yml"), "w") as stream:
        stream.write(GROUP_VARS)
    with open(os.path.join(directory, "hosts.yml"), "w") as stream:
        stream.write("---\nall:\n  hosts:\n")
        for index, name in enumerate(names):
            stream.write("    %s:\n      nodenet_nat_backend: %s\n" % (name, BACKENDS[index % len(BACKENDS)]))
        stream.write("  children:\n")
        for group in GROUPS:
            stream.write("    %s:\n      hosts:\n" % group)
            for name in names:
                stream.write("        %s:\n" % name)


def cpu_times():
    """(busy, idle) CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / float(ticks), idle / float(ticks)


class Run(object):
    """One converge: wall time, how busy the machine's cores were, the controller's own CPU time."""

    def __init__(self, wall, busy_cores, controller_cpu, changed):
        self.wall, self.busy_cores, self.controller_cpu, self.changed = wall, busy_cores, controller_cpu, changed


def converge(directory, forks, log_path):
    """Run site.yml; a Run (fails when a host failed)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(ROOT, ".collections"))
    argv = ["ansible-playbook", "-i", directory, "-f", str(forks), os.path.join(ROOT, "playbooks", "site.yml")]
    busy_before = cpu_times()[0]
    children_before = os.times()
    started = time.monotonic()
    with open(log_path, "w") as log:
        status = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False).returncode
    wall = time.monotonic() - started
    children_after = os.times()
    busy_after = cpu_times()[0]
    controller_cpu = (children_after.children_user - children_before.children_user
                      + children_after.children_system - children_before.children_system)
    with open(log_path) as log:
        output = log.read()
    recap = output[output.rfind("PLAY RECAP"):]
    changed, failed = {}, []
    for host, counters in re.findall(r"^(\S+)\s+:\s+(.*)$", recap, re.M):
        values = dict((key, int(value)) for key, value in re.findall(r"(\w+)=(\d+)", counters))
        changed[host] = values.get("changed", 0)
        if values.get("failed") or values.get("unreachable"):
            failed.append(host)
    if status != 0 or failed:
        raise RuntimeError("site.yml failed (exit %d, hosts %s); log: %s\n%s" % (
            status, failed, log_path, output[-4000:]))
    return Run(wall, (busy_after - busy_before) / wall, controller_cpu, changed)


def machine():
    cpu = cpu_model()
    with open("/proc/meminfo") as meminfo:
        memory = int(meminfo.readline().split()[1]) // (1024 * 1024)
    ansible = run(["ansible", "--version"]).splitlines()[0]
    podman = run(["podman", "--version"]).strip()
    return "%s, %d cores, %d GiB, kernel %s; %s; %s; Python %s" % (
        cpu, os.cpu_count(), memory, platform.release(), ansible, podman, platform.python_version())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=24)
    parser.add_argument("--forks", default="2,6", help="comma-separated fork counts, one fleet run each")
    parser.add_argument("--output", help="write the Markdown report here (default: print it)")
    args = parser.parse_args()
    forks_list = [int(forks) for forks in args.forks.split(",")]
    os.environ.setdefault("CONTAINERS_CONF", os.path.join(ROOT, "tests", "lab", "containers.conf"))
    os.environ["PATH"] = os.path.join(ROOT, ".venv", "bin") + os.pathsep + os.environ["PATH"]

    # Ctrl-C and SIGTERM end in the finally below, which removes every container.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="nodenet-fleetbench-")
    load = os.getloadavg()
    results = []
    try:
        say("one node: first converge (the reference) and the second")
        write_inventory(work, start_nodes(1))
        one = converge(work, 1, os.path.join(work, "one-1.log"))
        one_again = converge(work, 1, os.path.join(work, "one-2.log"))
        say("one node: %.1f s, again %.1f s" % (one.wall, one_again.wall))
        for forks in forks_list:
            say("%d nodes, %d forks: starting fresh containers" % (args.hosts, forks))
            write_inventory(work, start_nodes(args.hosts))
            say("%d nodes, %d forks: first converge" % (args.hosts, forks))
            first = converge(work, forks, os.path.join(work, "fleet-%d-1.log" % forks))
            ideal = math.ceil(args.hosts / float(forks)) * one.wall
            say("%d nodes, %d forks: %.1f s = %.2f x ceil(H/F) x one node; second converge" % (
                args.hosts, forks, first.wall, first.wall / ideal))
            second = converge(work, forks, os.path.join(work, "fleet-%d-2.log" % forks))
            changed_hosts = sorted(host for host, count in second.changed.items() if count)
            results.append((forks, ideal, first, second, changed_hosts))
            say("%d nodes, %d forks: second converge %.1f s, hosts changed: %d of %d" % (
                args.hosts, forks, second.wall, len(changed_hosts), len(second.changed)))
    finally:
        say("removed %d containers" % remove_all())
        shutil.rmtree(work, ignore_errors=True)

    lines = [
        "# site.yml over a fleet",
        "",
        "`playbooks/site.yml` (every profile: forwarding, node_egress, nodeport with two services, hairpin) on H "
        "node containers of the lab image, back ends nft / iptables-nft / iptables-legacy in turn, connection "
        "`containers.podman.podman`, default strategy (linear). Each fleet run starts from fresh containers. "
        "Target: the first converge of H hosts with F forks within 1.3 x ceil(H / F) x the first converge of one "
        "node.",
        "",
        "Reproduce (root, after `make setup`): `make bench-fleet FLEET_HOSTS=%d FLEET_FORKS=%s`" % (
            args.hosts, args.forks),
        "",
        "Machine: %s. Load average before the run: %.2f %.2f %.2f." % ((machine(),) + load),
        "",
        "One node: first converge %.1f s, second %.1f s (the controller's own CPU: %.1f s and %.1f s; the "
        "machine's cores busy on average: %.2f and %.2f of %d)." % (
            one.wall, one_again.wall, one.controller_cpu, one_again.controller_cpu, one.busy_cores,
            one_again.busy_cores, os.cpu_count()),
        "",
        "Busy cores: the whole machine's average during the run (this bench, and anything else running); controller "
        "CPU: ansible-playbook and the podman commands it starts, not the modules inside the containers.",
        "",
        "| H | forks | ceil(H/F) x one node | first converge | ratio | target 1.3x | busy cores | controller CPU "
        "| second converge | hosts changed |",
        "|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|",
    ]
    for forks, ideal, first, second, changed_hosts in results:
        lines.append("| %d | %d | %.1f s | %.1f s | %.2f | %s | %.2f | %.0f s | %.1f s | %d of %d |" % (
            args.hosts, forks, ideal, first.wall, first.wall / ideal, "met" if first.wall <= 1.3 * ideal else "missed",
            first.busy_cores, first.controller_cpu, second.wall, len(changed_hosts), len(second.changed)))
    report = "\n".join(lines) + "\n"
    if args.output:
        with open(args.output, "w") as stream:
            stream.write(report)
        say("wrote %s" % args.output)
    print(report)
    return 1 if any(result[4] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
