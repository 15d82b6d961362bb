"""Fixtures of the conntrack scenario.

``node`` runs commands with ``podman exec`` (testinfra's ansible backend starts one ansible process per
command). ``module`` runs a collection module with the json callback: with ansible-core 2.19 the tree
output that ``host.ansible`` reads carries neither ``failed`` nor ``warnings``, both of which these
tests assert.
"""
import json
import os
import subprocess

import pytest
import testinfra


class ModuleFailed(Exception):
    def __init__(self, result):
        super().__init__(result.get("msg"))
        self.result = result


@pytest.fixture
def node(host):
    return testinfra.get_host("podman://" + host.backend.get_hostname())


@pytest.fixture
def module(host):
    name = host.backend.get_hostname()

    def run(module_name, params, check_failed=True):
        # auto_silent: the only warnings left are the module's own.
        env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_PYTHON_INTERPRETER="auto_silent")
        argv = ["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], name, "-m", module_name, "-a", json.dumps(params)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)
        result = json.loads(out.stdout)["plays"][0]["tasks"][0]["hosts"][name]
        if check_failed and result.get("failed"):
            raise ModuleFailed(result)
        return result

    return run
