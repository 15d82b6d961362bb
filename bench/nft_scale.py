#!/usr/bin/env python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the nft backend scales with the number of services.

For N DNAT service rules (one ClusterIP:port each, 3 endpoints each) it times: render, ``nft -c``
(validation), the first apply, the apply that replaces a table of N services, the listing
(``nft -j list table``) and its parse; and it counts what a packet walks through (rules in base
chains) against what grows (map elements, per-service chains).

Runs itself inside a throwaway network namespace (``unshare --net``, root), so the host's ruleset
is never touched. Prints a Markdown report:  python bench/nft_scale.py > bench/RESULTS.md
Needs the collection link that ``make collection`` (or any unit test run) creates under .collections/.
"""
import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, ".collections"))

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState  # noqa: E402
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend  # noqa: E402
from ansible_collections.nodenet.nat.plugins.module_utils.model import Endpoint, PortRange, make_rule  # noqa: E402

SERVICE_COUNTS = tuple(int(count) for count in os.environ.get("NFT_SCALE_COUNTS", "100,1000,10000").split(","))
ENDPOINTS_PER_SERVICE = 3
REPEATS = 3
INSIDE_NETNS = "--inside-netns"
BACKEND = NftBackend()
SERVICE_NETWORK = ipaddress.ip_network("10.96.0.0/12")
POD_NETWORK = ipaddress.ip_network("10.128.0.0/9")


def services(count, generation):
    """``count`` ClusterIP services; ``generation`` moves the endpoints so a replace really changes them."""
    rules = []
    for index in range(count):
        endpoints = tuple(Endpoint(POD_NETWORK[ENDPOINTS_PER_SERVICE * index + n + 1 + generation], 8080)
                          for n in range(ENDPOINTS_PER_SERVICE))
        rules.append(make_rule(name="svc/bench/s%d:http" % index, type="dnat", chain="prerouting", family="ipv4",
                               destination=(ipaddress.ip_network(SERVICE_NETWORK[index + 1]),), protocol="tcp",
                               destination_ports=(PortRange(80, 80),), to_destination=endpoints))
    return rules


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def nft(argv, text=None):
    result = subprocess.run(argv, input=text, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    if result.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(argv), result.stderr[:2000]))
    return result.stdout


def apply(transaction):
    return nft(transaction.apply_argv, transaction.text)


def check(transaction):
    return nft(transaction.check_argv, transaction.text)


def listing_counts(listing):
    objects = json.loads(listing)["nftables"]
    base_chains = set(item["chain"]["name"] for item in objects if "hook" in item.get("chain", {}))
    rules = [item["rule"] for item in objects if "rule" in item]
    return dict(
        base_rules=sum(1 for rule in rules if rule["chain"] in base_chains),
        all_rules=len(rules),
        chains=sum(1 for item in objects if "chain" in item),
        elements=sum(len(item["map"].get("elem", [])) for item in objects if "map" in item),
    )


def measure(count):
    """One run for ``count`` services from no table back to none; returns seconds per step, counts, script size."""
    rules, replacement = services(count, 0), services(count, ENDPOINTS_PER_SERVICE)
    seconds = {}
    seconds["render"], (transaction,) = timed(BACKEND.render, rules, HostState([], {"tables": set()}))
    seconds["nft -c"], dummy = timed(check, transaction)
    seconds["apply"], dummy = timed(apply, transaction)
    list_argv = dict(BACKEND.list_commands())["ipv4"]
    seconds["list"], listing = timed(nft, list_argv)
    seconds["parse"], state = timed(BACKEND.parse, {"ipv4": listing})
    if state.rules != rules:
        sys.exit("parse of %d services does not give back the rendered rules" % count)
    (replace,) = BACKEND.render(replacement, state)
    seconds["replace"], dummy = timed(apply, replace)
    replaced = BACKEND.parse({"ipv4": nft(list_argv)})
    if replaced.rules != replacement:
        sys.exit("replace of %d services did not converge" % count)
    (remove,) = BACKEND.render([], replaced)
    seconds["remove"], dummy = timed(apply, remove)
    return seconds, listing_counts(listing), len(transaction.text)


def report():
    steps = ("render", "nft -c", "apply", "replace", "list", "parse", "remove")
    lines = [
        "# nft backend at scale",
        "",
        "N ClusterIP-style DNAT rules (`destination` one host, tcp, one port; %d endpoints each: "
        "`numgen random mod %d map`), in one `table ip nodenet_nat`. Median of %d runs, seconds. "
        "`replace` applies a ruleset of N services with other endpoints over the table of N "
        "(the module's steady-state change); `list` is `nft -j list table`, `parse` turns it back into rules "
        "(checked equal to the input); `remove` deletes the table (the empty ruleset)." % (ENDPOINTS_PER_SERVICE, ENDPOINTS_PER_SERVICE, REPEATS),
        "",
        "Reproduce (root; runs inside its own network namespace): `python bench/nft_scale.py > bench/RESULTS.md`",
        "",
        "Machine: %s, %d cores (%s), kernel %s, %s, Python %s." % (
            _cpu_model(), os.cpu_count(), platform.machine(), platform.release(), nft(["nft", "--version"]).strip(),
            platform.python_version()),
        "",
        "| N | script bytes | " + " | ".join(steps) + " |",
        "|---:|---:|" + "---:|" * len(steps),
    ]
    structure = []
    for count in SERVICE_COUNTS:
        runs = [measure(count) for _repeat in range(REPEATS)]
        medians = [statistics.median(run[0][step] for run in runs) for step in steps]
        lines.append("| %d | %d | %s |" % (count, runs[0][2], " | ".join("%.3f" % value for value in medians)))
        structure.append((count, runs[0][1]))
    lines += [
        "",
        "What a packet walks through does not grow with N: the base chain holds one lookup rule "
        "(`ip daddr . meta l4proto . th dport vmap @prerouting_destination_1`); a matching packet then "
        "jumps to its service's chain (one rule: the `numgen` dnat). What grows is data: map elements and "
        "per-service chains.",
        "",
        "| N | rules in base chains (per packet) | all rules | chains | map elements |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += ["| %d | %d | %d | %d | %d |" % (count, counts["base_rules"], counts["all_rules"], counts["chains"], counts["elements"])
              for count, counts in structure]
    return "\n".join(lines) + "\n"


def _cpu_model():
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main():
    if INSIDE_NETNS not in sys.argv:
        os.execvp("unshare", ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), INSIDE_NETNS])
    sys.stdout.write(report())


if __name__ == "__main__":
    main()
