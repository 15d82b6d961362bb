#!/usr/bin/env python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two revisions of the collection side by side on one step of bench/scale.py, in one run.

The machine moves too much from one run to the next to compare a figure with one measured an hour
before; this runs both revisions in turn (ABBA order), each in its own network namespace (its own run
record), each run above a floor run just before it (bench/scale.py's above_floor), and gives each revision's
median:

    .venv/bin/python bench/compare.py c7b9fa2 HEAD --backend iptables-legacy --count 50000 --step "one changed"

Steps: "one changed" (the service moved there and back, every run a change), "no-op", "first run" (the
host emptied between runs, not measured) and "after a reboot" (a no-op on a host whose run record is gone, as /run
is after a reboot, while the boot path has put the rules back). ``--auto`` runs the measured task with ``backend:
auto`` (the roles' default) on the host that ``--backend`` filled. Needs root and ``make setup``, as bench/scale.py does.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import scale


def _export(revision, root):
    """A collections path holding ``revision`` of this repository as nodenet.nat."""
    tree = os.path.join(root, "ansible_collections", "nodenet", "nat")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", scale.REPO, "archive", revision], stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return root


def _use(collections):
    scale.ENV.update(ANSIBLE_COLLECTIONS_PATH=collections, PYTHONPATH=collections)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs=2)
    parser.add_argument("--backend", default="iptables-legacy", choices=scale.BACKENDS)
    parser.add_argument("--count", type=int, default=50000)
    parser.add_argument("--step", default="one changed", choices=("one changed", "no-op", "first run", "after a reboot"))
    parser.add_argument("--auto", action="store_true", help="measure the task with backend: auto")
    parser.add_argument("--runs", type=int, default=6, help="runs of each revision")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/compare.py needs root (network namespaces)")
    workdir = tempfile.mkdtemp(prefix="nodenet-compare-")
    namespaces = []
    try:
        sides = []
        for index, revision in enumerate(args.revisions):
            collections = _export(revision, os.path.join(workdir, "collections-%d" % index))
            namespace = scale.Namespace()
            namespaces.append(namespace)
            sides.append(dict(revision=revision, collections=collections, namespace=namespace,
                              work=tempfile.mkdtemp(dir=workdir), seconds=[], runs=0))
        task = scale.NAT_RULES_TASK % args.backend
        measured_task = scale.NAT_RULES_TASK % "auto" if args.auto else task
        base, moved = scale.as_text(scale.services(args.count)), scale.as_text(scale.services(args.count, moved=args.count // 2))
        empty = scale.as_text([])
        for side in sides:
            _use(side["collections"])
            scale.ansible_seconds(side["namespace"], side["work"], task, base)
        floors = []
        for round_index in range(args.runs):
            for side in (sides if round_index % 2 == 0 else sides[::-1]):
                _use(side["collections"])
                if args.step == "first run":
                    scale.ansible_seconds(side["namespace"], side["work"], task, empty)
                    variables = base
                elif args.step == "one changed":
                    variables = moved if side["runs"] % 2 == 0 else base
                else:
                    variables = base
                if args.step == "after a reboot":
                    side["namespace"].forget_record()
                side["seconds"].append(scale.above_floor(side["namespace"], side["work"], measured_task, variables, scale.TEXT_FLOOR_TASK,
                                                         base, floors))
                side["runs"] += 1
        floor = statistics.median(floors)
        print("%s%s, %d services, %s: %d runs each, floor %.2f s (median of %s)"
              % (args.backend, " (backend: auto)" if args.auto else "", args.count, args.step, args.runs, floor,
                 " ".join("%.2f" % value for value in floors)))
        for side in sides:
            runs = " ".join("%.2f" % value for value in side["seconds"])
            print("%-12s above the floor %.2f s (runs: %s)" % (side["revision"], statistics.median(side["seconds"]), runs))
    finally:
        for namespace in namespaces:
            namespace.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
