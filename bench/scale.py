#!/usr/bin/env python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nat_rules at scale, side by side in one run: what a user waits for, and what a packet waits for.

1. Converging N NodePort-shaped services (one DNAT rule each, two endpoints) with one
   ``nodenet.nat.nat_rules`` task (``state: overridden``), per backend: the first run, a no-op, one
   service changed, one removed. Wall time of ``ansible-playbook`` minus that of a floor run just before
   it (the same playbook and vars with a ``debug`` task instead), the module's own time and peak RSS (the module file run
   directly on the same arguments), and the raw ``nft -f`` / ``iptables-restore`` of the module's
   own first-run script.
2. ``ansible.builtin.iptables`` in a loop over 100 such rules: the per-rule cost it is compared with.
3. First-packet latency through the node: TCP connects from a client namespace to the LAST
   service's node port, DNATed to a backend namespace, p50/p99 over many connections, at
   10 to 30 000 services per backend.

Everything runs inside network namespaces this script creates (``unshare --net``, held by a
``sleep`` and entered with ``nsenter``) and removes; the machine's own ruleset, forwarding and
routes are never touched. Needs root, the Debian packages and the venv of ``make setup``:

    .venv/bin/python bench/scale.py            # writes bench/RESULTS.md, bench/convergence.png, bench/latency.png

NODENET_BENCH_SIZES, NODENET_BENCH_LATENCY_SIZES, NODENET_BENCH_BACKENDS (comma-separated) narrow a run.
"""
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from machine import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, ".collections")
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
MODULE = os.path.join(REPO, "plugins", "modules", "nat_rules.py")
RECORD_ROOT = "/run/nodenet-nat"


def sizes_from_env(name, default):
    return [int(value) for value in os.environ.get(name, default).split(",")]


SIZES = sizes_from_env("NODENET_BENCH_SIZES", "1000,10000,50000")
LATENCY_SIZES = sizes_from_env("NODENET_BENCH_LATENCY_SIZES", "10,1000,10000,30000")
BACKENDS = os.environ.get("NODENET_BENCH_BACKENDS", "nft,iptables,iptables-legacy").split(",")
STEPS = ("first run", "no-op", "one changed", "one removed")
BUILTIN_RULES = 100
CONNECTIONS = 1500
LATENCY_ROUNDS = 6
NODE_PORT = 10000
ENV = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, PYTHONPATH=COLLECTIONS, ANSIBLE_NOCOLOR="1",
           ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
           PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))


class Namespace(object):
    """A network namespace held open by a sleeping process; gone when it is closed."""

    def __init__(self):
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep 86400"],
                                       stdout=subprocess.PIPE, universal_newlines=True)
        if self.holder.stdout.readline() != "ready\n":
            raise RuntimeError("unshare did not start")
        self.path = "/proc/%d/ns/net" % self.holder.pid
        self.inode = os.stat(self.path).st_ino
        self.run(["ip", "link", "set", "lo", "up"])

    def argv(self, argv):
        return ["nsenter", "--net=%s" % self.path, "--"] + list(argv)

    def run(self, argv, data=None, check=True):
        result = subprocess.run(self.argv(argv), input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, env=ENV, check=False)
        if check and result.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (" ".join(argv), result.stdout[-3000:], result.stderr[-3000:]))
        return result

    def popen(self, argv):
        return subprocess.Popen(self.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=ENV)

    def forget_record(self):
        """Remove the module's lock and run record of this namespace (files, not network state), as a reboot empties /run."""
        shutil.rmtree(os.path.join(RECORD_ROOT, "netns-%d" % self.inode), ignore_errors=True)

    def close(self):
        self.holder.kill()
        self.holder.wait()
        self.holder.stdout.close()
        self.forget_record()
        try:
            os.rmdir(RECORD_ROOT)       # when no other namespace's record is left in it
        except OSError:
            pass


def services(count, moved=None):
    """``count`` NodePort-shaped DNAT rules with two endpoints each; service ``moved`` gets other endpoints."""
    return [{"name": "svc-%d" % index, "type": "dnat", "destination_type": "local", "protocol": "tcp",
             "destination_ports": [NODE_PORT + index],
             "to_destination": ["10.%d.%d.%d:8080" % (245 if index == moved else 244, index // 250, index % 250 + offset)
                                for offset in (1, 2)]}
            for index in range(count)]


REPEATS = 5


def step_configs(count):
    """[(step, config)] in order, every step REPEATS times for a median: the no-op, the one-service change (there,
    back, there again, ...), the removal and the first run. A step None only brings the host back for the next one
    (the removed service again, or nothing at all before another first run) and is not measured."""
    changed, unchanged = services(count, moved=count // 2), services(count)
    last = changed if REPEATS % 2 else unchanged
    return ([("first run", unchanged)] + [("no-op", unchanged)] * REPEATS
            + [("one changed", changed if index % 2 == 0 else unchanged) for index in range(REPEATS)]
            + [("one removed", last[:-1]), (None, last)] * (REPEATS - 1) + [("one removed", last[:-1])]
            + [(None, []), ("first run", unchanged)] * (REPEATS - 1))


# ---------------------------------------------------------------------------- convergence

PLAYBOOK = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Converge
      %s
"""
# The rules reach the task as JSON text (a string variable), as the module documents for big rulesets;
# LIST_TASK passes the same rules as a list variable, for comparison. Each has its floor: the same vars, a debug task.
NAT_RULES_TASK = """nodenet.nat.nat_rules:
        backend: %s
        state: overridden
        config: "{{ nat_rules_text }}"
"""
LIST_TASK = NAT_RULES_TASK.replace("nat_rules_text", "nat_rules_config")
TEXT_FLOOR_TASK = """ansible.builtin.debug:
        msg: "{{ nat_rules_text | length }}"
"""
LIST_FLOOR_TASK = TEXT_FLOOR_TASK.replace("nat_rules_text", "nat_rules_config")


def as_text(config):
    return {"nat_rules_text": json.dumps(config)}


def as_list(config):
    return {"nat_rules_config": config}


def ansible_seconds(namespace, workdir, task, variables):
    """Wall seconds of ansible-playbook running ``task`` with ``variables`` as extra vars."""
    with open(os.path.join(workdir, "vars.json"), "w") as handle:
        json.dump(variables, handle)
    with open(os.path.join(workdir, "play.yml"), "w") as handle:
        handle.write(PLAYBOOK % task)
    start = time.perf_counter()
    namespace.run(["ansible-playbook", "-i", "localhost,", "-e", "ansible_python_interpreter=" + sys.executable,
                   "-e", "@" + os.path.join(workdir, "vars.json"), os.path.join(workdir, "play.yml")])
    return time.perf_counter() - start


def module_run(namespace, workdir, params, module=MODULE):
    """(result, seconds, peak RSS MiB) of a module file run directly on ``params``, a ``config`` as JSON text (as the tasks pass it)."""
    path = os.path.join(workdir, "args.json")
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": dict(params, config=json.dumps(params["config"])) if "config" in params else params}, handle)
    timing = os.path.join(workdir, "time.txt")
    output = namespace.run(["/usr/bin/time", "-o", timing, "-f", "%e %M", sys.executable, module, path], check=False)
    try:
        result = json.loads(output.stdout)
    except ValueError:
        raise RuntimeError("module printed no result (rc %s): %s" % (output.returncode, output.stderr[-3000:]))
    if result.get("failed"):
        raise RuntimeError("module failed: %s" % result.get("msg"))
    with open(timing) as handle:
        seconds, kilobytes = handle.read().split()[-2:]
    return result, float(seconds), int(kilobytes) / 1024.0


def raw_apply_seconds(namespace, transactions, commands):
    """Seconds the backend's own tool takes to apply the scripts of ``transactions`` (their lines, one after the other, in ``commands``)."""
    seconds, lines = 0.0, list(commands)
    for transaction in transactions:
        script = "\n".join(lines[:transaction["lines"]]) + "\n"
        del lines[:transaction["lines"]]
        start = time.perf_counter()
        namespace.run(transaction["argv"], data=script)
        seconds += time.perf_counter() - start
    return seconds


def above_floor(namespace, workdir, task, variables, floor_task, floor_variables, floors):
    """Seconds of ``task`` above its floor run just before it (appended to ``floors``): the machine drifts by tenths of
    a second within minutes, and a floor measured beside each run takes the drift out of the difference."""
    floors.append(ansible_seconds(namespace, workdir, floor_task, floor_variables))
    return ansible_seconds(namespace, workdir, task, variables) - floors[-1]


def measure_convergence(backend, count, workdir):
    """{step: {"ansible": s above floor, "module": s, "rss": MiB}} (medians of the repeated steps), plus floor and raw apply seconds."""
    samples, floors = {}, []
    floor_variables = as_text(services(count))
    namespace = Namespace()
    try:
        for step, config in step_configs(count):
            if step is None:
                ansible_seconds(namespace, workdir, NAT_RULES_TASK % backend, as_text(config))
                continue
            samples.setdefault(step, []).append(
                above_floor(namespace, workdir, NAT_RULES_TASK % backend, as_text(config), TEXT_FLOOR_TASK, floor_variables, floors))
        floor = statistics.median(floors)
        figures = dict((step, {"ansible": statistics.median(values)}) for step, values in samples.items())
        # A no-op with the rules as a list variable (the rules the last step left), above its own floor: what ansible costs to walk them.
        last = step_configs(count)[-1][1]
        # The same no-op with backend auto (the module's and the roles' default).
        figures["no-op"]["ansible auto"] = above_floor(namespace, workdir, NAT_RULES_TASK % "auto", as_text(last),
                                                       TEXT_FLOOR_TASK, floor_variables, [])
        figures["no-op"]["ansible list"] = above_floor(namespace, workdir, LIST_TASK % backend, as_list(last),
                                                       LIST_FLOOR_TASK, as_list(last), [])
    finally:
        namespace.close()
    samples = {}
    namespace = Namespace()
    try:
        for step, config in step_configs(count):
            result, seconds, rss = module_run(namespace, workdir, {"backend": backend, "state": "overridden", "config": config})
            assert result["changed"] == (step != "no-op"), (step, result.get("summary"))
            if step is not None:
                samples.setdefault(step, []).append((seconds, rss))
        result, auto_seconds, dummy = module_run(namespace, workdir, {"backend": "auto", "state": "overridden", "config": config})
        assert not result["changed"] and result["backend"] == backend, result.get("backend_reason")
    finally:
        namespace.close()
    for step, values in samples.items():
        figures[step].update(module=statistics.median(seconds for seconds, rss in values), rss=max(rss for seconds, rss in values))
    figures["no-op"]["module auto"] = auto_seconds
    namespace = Namespace()
    try:
        # The first run's script: what the module renders for these rules on a host without them.
        script, dummy, dummy = module_run(namespace, workdir, {"backend": backend, "state": "rendered", "config": services(count)})
        raw = raw_apply_seconds(namespace, script["transactions"], script["rendered"])
    finally:
        namespace.close()
    return figures, floor, raw


def measure_builtin_loop(workdir):
    """Seconds per rule of ansible.builtin.iptables over BUILTIN_RULES rules (one looped task), above the floor."""
    task = """ansible.builtin.iptables:
        table: nat
        chain: PREROUTING
        protocol: tcp
        destination_port: "{{ item.destination_ports[0] }}"
        jump: DNAT
        to_destination: "{{ item.to_destination[0] }}"
        comment: "{{ item.name }}"
      loop: "{{ nat_rules_config }}"
"""
    namespace = Namespace()
    try:
        variables = as_list(services(BUILTIN_RULES))
        seconds = above_floor(namespace, workdir, task, variables, LIST_FLOOR_TASK, variables, [])
    finally:
        namespace.close()
    return seconds / BUILTIN_RULES


# ---------------------------------------------------------------------------- data plane

SERVER = """
import socket, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8080))
server.listen(4096)
print("listening", flush=True)
while True:
    connection, dummy = server.accept()
    connection.close()
"""

PROBE = """
import socket, struct, sys, time
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for attempt in range(count + 20):
    client = socket.socket()
    client.settimeout(5)
    start = time.perf_counter()
    client.connect((address, port))
    elapsed = time.perf_counter() - start
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    if attempt >= 20:
        times.append(elapsed)
print(" ".join("%.9f" % value for value in times))
"""


class Topology(object):
    """client (198.51.100.2) -- node (198.51.100.1 | 10.244.0.1, forwarding) -- backend (10.244.0.2:8080)."""

    def __init__(self):
        self.client, self.node, self.backend = Namespace(), Namespace(), Namespace()
        self._link(self.client, "198.51.100.2/24", self.node, "198.51.100.1/24")
        self._link(self.backend, "10.244.0.2/24", self.node, "10.244.0.1/24")
        self.backend.run(["ip", "route", "add", "default", "via", "10.244.0.1"])
        self.node.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])   # the node namespace's own forwarding
        self.server = self.backend.popen([sys.executable, "-c", SERVER])
        if self.server.stdout.readline().strip() != "listening":
            raise RuntimeError("backend server did not start")

    @staticmethod
    def _link(inner, inner_address, node, node_address):
        name = "bn%d" % inner.holder.pid
        node.run(["ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", str(inner.holder.pid)])
        node.run(["ip", "addr", "add", node_address, "dev", name])
        node.run(["ip", "link", "set", name, "up"])
        inner.run(["ip", "addr", "add", inner_address, "dev", "eth0"])
        inner.run(["ip", "link", "set", "eth0", "up"])

    def probe(self, port):
        output = self.client.run([sys.executable, "-c", PROBE, "198.51.100.1", str(port), str(CONNECTIONS)]).stdout
        return sorted(float(value) for value in output.split())

    def close(self):
        self.server.kill()
        self.server.wait()
        self.server.stdout.close()
        self.server.stderr.close()
        for namespace in (self.client, self.node, self.backend):
            namespace.close()


def measure_latency(backend, workdir):
    """{services: (p50 ms, p99 ms)} of new connections to the last service, over LATENCY_ROUNDS rounds through the sizes
    (so that a noisy minute of a shared machine falls on every size alike)."""
    times = dict((count, []) for count in LATENCY_SIZES)
    topology = Topology()
    try:
        for dummy_round in range(LATENCY_ROUNDS):
            for count in LATENCY_SIZES:
                config = [dict(rule, to_destination=["10.244.0.2:8080"]) for rule in services(count)]
                module_run(topology.node, workdir, {"backend": backend, "state": "overridden", "config": config})
                times[count] += topology.probe(NODE_PORT + count - 1)
    finally:
        topology.close()
    figures = {}
    for count, samples in times.items():
        samples.sort()
        figures[count] = (1000 * statistics.median(samples), 1000 * samples[int(len(samples) * 0.99) - 1])
    return figures


# ---------------------------------------------------------------------------- report

def machine_summary():
    cpu = cpu_model()
    versions = [subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=ENV, check=False).stdout.strip()
                for argv in (["nft", "--version"], ["iptables-nft", "--version"], ["ansible", "--version"])]
    ansible_core = re.search(r"core ([0-9.]+)", versions[2])
    return "%s, %d cores (%s), kernel %s, %s, %s, ansible-core %s, Python %s" % (
        cpu, os.cpu_count(), platform.machine(), platform.release(), versions[0], versions[1],
        ansible_core.group(1) if ansible_core else "?", platform.python_version())


def plot(convergence, latency):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(STEPS), figsize=(4 * len(STEPS), 4), sharey=True)
    for axis, step in zip(axes, STEPS):
        for backend in BACKENDS:
            axis.plot(SIZES, [max(convergence[backend][count][0][step]["ansible"], 0.01) for count in SIZES], marker="o", label=backend)
        axis.set(title=step, xscale="log", yscale="log", xlabel="services")
    axes[0].set_ylabel("seconds above ansible's floor")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(os.path.join(REPO, "bench", "convergence.png"), dpi=90)
    figure, axis = pyplot.subplots(figsize=(6, 4))
    for backend in BACKENDS:
        axis.plot(LATENCY_SIZES, [latency[backend][count][1] for count in LATENCY_SIZES], marker="o", label="%s p99" % backend)
        axis.plot(LATENCY_SIZES, [latency[backend][count][0] for count in LATENCY_SIZES], marker=".", linestyle=":",
                  label="%s p50" % backend)
    axis.set(xscale="log", xlabel="services", ylabel="TCP connect to the last service (ms)", title="first-packet latency")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(os.path.join(REPO, "bench", "latency.png"), dpi=90)


def report(convergence, builtin_per_rule, latency, started, seconds, machine):
    lines = [
        "# nat_rules at scale",
        "",
        "Measured by `bench/scale.py` in one run (all figures side by side, same machine, same hour): "
        "`.venv/bin/python bench/scale.py` (root; it works in network namespaces it creates and removes).",
        "",
        "Machine: %s. Run started %s and took %d min." % (machine, started, seconds // 60),
        "",
        "## Converging N services",
        "",
        "N NodePort-shaped services (`destination_type: local`, tcp, one port, two endpoints), one "
        "`nodenet.nat.nat_rules` task with `state: overridden` and the rules as JSON text in a variable (as the module "
        "documents for big rulesets). **ansible** is the wall time of `ansible-playbook` minus that of its floor run just "
        "before it (the same playbook and vars with a `debug` task; the floor column is the median of them); **as a list** "
        "the same no-op with the rules in a list variable, above the floor of that variable; **backend auto** the same "
        "no-op with `backend: auto` (the default); **module** the module's own "
        "wall time and **RSS** its peak resident memory, the module file run directly on the same arguments; **raw** the "
        "backend's own tool applying the module's first-run script. The no-op and the one-service change (there and back "
        "in turn), the removal and the first run (on a host emptied again) run %d times each and give their median." % REPEATS,
        "",
        "| backend | N | floor s | step | ansible s | module s | RSS MiB | raw s |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for backend in BACKENDS:
        for count in SIZES:
            figures, floor, raw = convergence[backend][count]
            for step in STEPS:
                lines.append("| %s | %d | %.2f | %s | %.2f | %.2f | %.0f | %s |" % (
                    backend, count, floor, step, figures[step]["ansible"], figures[step]["module"], figures[step]["rss"],
                    "%.2f" % raw if step == "first run" else ""))
            lines.append("| %s | %d | %.2f | no-op, as a list | %.2f | | | |" % (backend, count, floor, figures["no-op"]["ansible list"]))
            lines.append("| %s | %d | %.2f | no-op, backend auto | %.2f | %.2f | | |" % (
                backend, count, floor, figures["no-op"]["ansible auto"], figures["no-op"]["module auto"]))
    lines += ["", "![convergence](convergence.png)", ""]
    lines += ["## Per rule, against `ansible.builtin.iptables`", "",
              "`ansible.builtin.iptables` looped over %d such rules costs **%.3f s per rule** above the floor. nat_rules' "
              "first run above the floor, divided by N (a task's fixed cost weighs more the fewer rules it has):"
              % (BUILTIN_RULES, builtin_per_rule),
              "", "| backend | N | nat_rules first run, s per rule | times cheaper |", "|---|---:|---:|---:|"]
    for backend in BACKENDS:
        for count in SIZES:
            per_rule = max(convergence[backend][count][0]["first run"]["ansible"], 1e-3) / count
            lines.append("| %s | %d | %.6f | %.0f |" % (backend, count, per_rule, builtin_per_rule / per_rule))
    lines += ["", "## First-packet latency", "",
              "TCP connects (%d per size in each of %d rounds through the sizes, after 20 warm-up) from a client namespace to "
              "the node port of the LAST service, DNATed by the node namespace to a backend namespace: every connect is a new "
              "conntrack entry, so the SYN walks the nat chains. Milliseconds." % (CONNECTIONS, LATENCY_ROUNDS), "",
              "| backend | " + " | ".join("%d services p50 / p99" % count for count in LATENCY_SIZES) + " |",
              "|---|" + "---:|" * len(LATENCY_SIZES)]
    for backend in BACKENDS:
        lines.append("| %s | %s |" % (backend, " | ".join("%.3f / %.3f" % latency[backend][count] for count in LATENCY_SIZES)))
    lines += ["", "![latency](latency.png)", ""]
    return "\n".join(lines) + "\n"


def main():
    if os.geteuid() != 0:
        sys.exit("bench/scale.py needs root (network namespaces)")
    started, start, machine = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time(), machine_summary()
    workdir = tempfile.mkdtemp(prefix="nodenet-bench-")
    # A kill runs the finally blocks: namespaces, run records and the work directory go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        convergence, latency = {}, {}
        for backend in BACKENDS:
            convergence[backend] = {}
            for count in SIZES:
                convergence[backend][count] = measure_convergence(backend, count, workdir)
                print("%s %d: %s" % (backend, count, json.dumps(convergence[backend][count])), file=sys.stderr, flush=True)
        builtin_per_rule = measure_builtin_loop(workdir)
        print("builtin iptables: %r s per rule" % builtin_per_rule, file=sys.stderr, flush=True)
        for backend in BACKENDS:
            latency[backend] = measure_latency(backend, workdir)
            print("latency %s: %s" % (backend, latency[backend]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    plot(convergence, latency)
    with open(os.path.join(REPO, "bench", "RESULTS.md"), "w") as handle:
        handle.write(report(convergence, builtin_per_rule, latency, started, int(time.time() - start), machine))


if __name__ == "__main__":
    main()
