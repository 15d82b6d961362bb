"""Fixtures of the node_egress verifiers (pytest runs the files in name order: 1 masquerade, 2 SNAT, 3 absent)."""
import json
import os
import subprocess

import pytest


@pytest.fixture(scope="module")
def probes(node, probe, request):
    """{(namespace, address): [answer, ...]}: COUNT connections to port 8080 of each of the module's TARGETS."""
    count, timeout = getattr(request.module, "COUNT", 2), getattr(request.module, "TIMEOUT", 2)
    return dict((target, probe(node, *target, count=count, timeout=timeout)) for target in request.module.TARGETS)


@pytest.fixture(scope="module")
def owned_rules(host, module):
    """Names of the owned rules on the node, read with the node's backend: (backend used, names)."""
    backend = host.ansible.get_variables()["nodenet_nat_backend"]
    result = module("nodenet.nat.nat_rules", {"state": "gathered", "backend": backend})
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
