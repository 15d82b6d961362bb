"""Fixtures shared by the test files (pytest runs them in name order: 1 masquerade, 2 SNAT, 3 absent).

Each remote command costs a round trip through ansible, so a test module sends all its probes in one command.
"""
import json
import os
import subprocess

import pytest


def probe_all(host, targets, count, timeout):
    """{(namespace, address): [answer, ...]}: COUNT connections to port 8080 from each namespace to each address."""
    script = "; ".join("echo '== %s %s'; lab.py probe %s %s 8080 --count %d --timeout %s" % (ns, addr, ns, addr, count, timeout)
                       for ns, addr in targets)
    answers, current = {}, None
    for line in host.check_output("bash -c %s", script).splitlines():
        if line.startswith("== "):
            current = tuple(line.split()[1:3])
            answers[current] = []
        else:
            answers[current].append(line)
    return answers


@pytest.fixture(scope="module")
def probes(host, request):
    """The answers to the module's TARGETS (list of (namespace, address)), COUNT and TIMEOUT."""
    return probe_all(host, request.module.TARGETS, getattr(request.module, "COUNT", 2), getattr(request.module, "TIMEOUT", 2))


@pytest.fixture(scope="module")
def owned_rules(host):
    """Names of the owned rules on the node, read with the node's backend: (backend used, names)."""
    backend = host.ansible.get_variables()["nodenet_nat_backend"]
    result = host.ansible("nodenet.nat.nat_rules", "state=gathered backend=%s" % backend, check=False)
    return backend, result["backend"], sorted(rule["name"] for rule in result["gathered"])


def converge_all(**extra_vars):
    """Run the scenario's converge playbook on every node at once, with extra vars."""
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "-e", json.dumps(extra_vars),
            os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def converged_with():
    """converged_with(**extra_vars): converge every node again (once per test module)."""
    return converge_all
