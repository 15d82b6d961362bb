#!/usr/bin/env python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nat_info at scale: the facts with the owned rules summarized (the default) and listed in full, side by side in one run.

For each backend and N, N NodePort-shaped services (bench/scale.py's, two endpoints each) are loaded into a network
namespace with nat_rules; then, in turn, ``nodenet.nat.nat_info`` with ``result_rules: summary`` and ``all``: the
module file run directly (its wall time, peak RSS and the size of its result) and one ``nat_info`` task in
``ansible-playbook`` above a floor run just before it (the same playbook with a ``debug`` task). Each figure is the
median of REPEATS runs, the two modes alternating.

    .venv/bin/python bench/facts.py        # root; writes bench/FACTS.md

Everything runs in network namespaces it creates and removes, as bench/scale.py does; NODENET_BENCH_BACKENDS and
NODENET_FACTS_SIZES (comma-separated) narrow a run.
"""
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

import scale

sys.path.insert(0, scale.COLLECTIONS)
from ansible_collections.nodenet.nat.plugins.module_utils.nat_info import RULES_LISTED  # noqa: E402

INFO_MODULE = os.path.join(scale.REPO, "plugins", "modules", "nat_info.py")
SIZES = scale.sizes_from_env("NODENET_FACTS_SIZES", "1000,10000,50000")
MODES = ("summary", "all")
REPEATS = 3
INFO_TASK = """nodenet.nat.nat_info:
        backend: %s
        result_rules: %s
"""
FLOOR_TASK = """ansible.builtin.debug:
        msg: floor
"""


def measure(backend, count, workdir):
    """{mode: {"module": s, "rss": MiB, "kib": result KiB, "ansible": s above floor, "rule_count": n}}."""
    samples = dict((mode, []) for mode in MODES)
    namespace = scale.Namespace()
    try:
        scale.module_run(namespace, workdir, {"backend": backend, "state": "overridden", "config": scale.services(count)})
        for dummy in range(REPEATS):
            for mode in MODES:
                result, seconds, rss = scale.module_run(namespace, workdir, {"backend": backend, "result_rules": mode}, INFO_MODULE)
                facts = result["ansible_facts"]["nodenet_nat"]
                assert facts["rule_count"] == count and ("rules" in facts) == (mode == "all" or count <= RULES_LISTED), mode
                ansible = scale.above_floor(namespace, workdir, INFO_TASK % (backend, mode), {}, FLOOR_TASK, {}, [])
                samples[mode].append((seconds, rss, len(json.dumps(result)) / 1024.0, ansible))
    finally:
        namespace.close()
    return dict((mode, dict(module=statistics.median(values[0] for values in runs), rss=max(values[1] for values in runs),
                            kib=runs[0][2], ansible=statistics.median(values[3] for values in runs)))
                for mode, runs in samples.items())


def report(figures, started, seconds, machine):
    lines = [
        "# nat_info at scale",
        "",
        "Measured by `bench/facts.py` in one run: `.venv/bin/python bench/facts.py` (root; it works in network namespaces "
        "it creates and removes).",
        "",
        "Machine: %s. Run started %s and took %d min." % (machine, started, seconds // 60),
        "",
        "N NodePort-shaped services with two endpoints each (those of `bench/scale.py`), loaded by `nat_rules`; then "
        "`nodenet.nat.nat_info` with `result_rules: summary` (the default: at more than 1000 owned rules the facts give "
        "their number, not the rules and their counters) and `all` (every rule and its counters). **module**: the module "
        "file run directly, its wall time, peak RSS and the size of its JSON result; **ansible**: one `nat_info` task in "
        "`ansible-playbook`, above a floor run just before it (the same playbook with a `debug` task). Medians of %d runs, "
        "the two modes alternating." % REPEATS,
        "",
        "| backend | N | module s summary / all | RSS MiB summary / all | result KiB summary / all | ansible s summary / all |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for backend in scale.BACKENDS:
        for count in SIZES:
            summary, listed = figures[backend][count]["summary"], figures[backend][count]["all"]
            lines.append("| %s | %d | %.2f / %.2f | %.0f / %.0f | %.0f / %.0f | %.2f / %.2f |" % (
                backend, count, summary["module"], listed["module"], summary["rss"], listed["rss"], summary["kib"], listed["kib"],
                summary["ansible"], listed["ansible"]))
    return "\n".join(lines) + "\n"


def main():
    if os.geteuid() != 0:
        sys.exit("bench/facts.py needs root (network namespaces)")
    started, start, machine = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.time(), scale.machine_summary()
    workdir = tempfile.mkdtemp(prefix="nodenet-facts-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures = {}
    try:
        for backend in scale.BACKENDS:
            figures[backend] = {}
            for count in SIZES:
                figures[backend][count] = measure(backend, count, workdir)
                print("%s %d: %s" % (backend, count, json.dumps(figures[backend][count])), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with open(os.path.join(scale.REPO, "bench", "FACTS.md"), "w") as handle:
        handle.write(report(figures, started, int(time.time() - start), machine))


if __name__ == "__main__":
    main()
