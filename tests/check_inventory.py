#!/usr/bin/env python
"""Check an inventory for playbooks/site.yml offline: each host's variables against the argument specs of
the roles its groups apply (roles/<role>/meta/argument_specs.yml), as ansible would at the start of the role.

  python tests/check_inventory.py INVENTORY [INVENTORY ...]

Prints one line per host and role and exits 1 when a value is invalid (an unknown key inside a service, a
wrong type, a choice that does not exist). Needs ansible-core (the project's .venv).
"""
import os
import sys

import yaml
from ansible.inventory.manager import InventoryManager
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# site.yml: inventory group -> role it applies
GROUP_ROLES = {
    "nodenet_nat_egress": "node_egress",
    "nodenet_nat_nodeport": "nodeport",
    "nodenet_nat_hairpin": "hairpin",
}


def role_spec(role):
    with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")) as spec_file:
        return yaml.safe_load(spec_file)["argument_specs"]["main"]["options"]


def check(inventory_path):
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[inventory_path])
    variables = VariableManager(loader=loader, inventory=inventory)
    failures = 0
    for host in inventory.get_hosts():
        host_vars = variables.get_vars(host=host)
        groups = [group.name for group in host.get_groups()]
        for group, role in GROUP_ROLES.items():
            if group not in groups:
                continue
            spec = role_spec(role)
            params = {name: host_vars[name] for name in spec if name in host_vars}
            result = ArgumentSpecValidator(spec).validate(params)
            if result.error_messages:
                failures += 1
                for message in result.error_messages:
                    print("FAIL %s %s: %s" % (host.name, role, message))
            else:
                print("ok   %s %s: %s" % (host.name, role, ", ".join(sorted(params)) or "defaults"))
    return failures


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    failures = sum(check(path) for path in sys.argv[1:])
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
