"""Fixtures of the node_egress verifiers (pytest runs the files in name order: 1 masquerade, 2 boot, 3 SNAT without persistence, 4 absent)."""
import json
import os

import pytest


@pytest.fixture(scope="module")
def owned_rules(backend, module):
    """(backend requested, backend used, names of the owned rules on the node)."""
    result = module("nodenet.nat.nat_rules", {"state": "gathered", "backend": backend})
    return backend, result["backend"], sorted(rule["name"] for rule in result["gathered"])


@pytest.fixture(scope="module")
def converged_with(playbook):
    """converged_with(**extra_vars): converge every node again with extra vars (once per test module)."""
    converge = os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "converge.yml")
    return lambda **extra_vars: playbook(converge, "-e", json.dumps(extra_vars))
