"""A reboot, simulated (no systemd in the containers): the ruleset and the forwarding keys go; the boot path the role
installed - the forwarding module's sysctl.d file, then nodenet-nat.service's ExecStart - brings egress back on both
families, as the role converged it, and running it again changes nothing."""
import re

import pytest

UPSTREAM = {"203.0.113.2": "203.0.113.1 upstream", "2001:db8::2": "2001:db8::1 upstream"}


def unmarked(listing):
    """The listing with the marker chain unnamed (nft state_, iptables NODENET-RUN-: named after the run that wrote
    the rules, or after the rules in the boot files)."""
    return re.sub(r"(state_|NODENET-RUN-)[0-9a-f]+", r"\1", listing)


@pytest.fixture(name="converged", scope="module")
def fixture_converged(node, backend, ruleset):
    """The ruleset the role left."""
    return unmarked(ruleset(node, backend))


def test_the_role_installed_the_boot_path_for_its_backend(node, backend, boot_files):
    unit = node.file(boot_files["unit"]).content_string
    assert re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE).group(1) == " ".join(
        [boot_files["loader"], boot_files["nft"], boot_files["iptables"], boot_files["iptables6"]])
    assert node.file(boot_files["loader"]).mode == 0o755
    written = [boot_files["nft"]] if backend == "nft" else [boot_files["iptables"], boot_files["iptables6"]]
    assert [path for path in (boot_files["nft"], boot_files["iptables"], boot_files["iptables6"]) if node.file(path).exists] == written


def test_a_reboot_takes_egress(node, backend, probe, forget, converged):
    forget(node, backend)
    assert node.sysctl("net.ipv4.ip_forward") == 0
    for address in UPSTREAM:
        assert probe(node, "pod-a", address, count=1, timeout=1) == ["timeout"]


def test_the_boot_path_brings_egress_back_as_the_role_converged_it(node, backend, probe, boot, ruleset, converged):
    assert "nodenet-nat-restore: loaded" in boot(node)
    assert node.sysctl("net.ipv4.ip_forward") == 1 and node.sysctl("net.ipv6.conf.all.forwarding") == 1
    for address, answer in UPSTREAM.items():
        assert probe(node, "pod-a", address, count=2) == [answer] * 2
    assert unmarked(ruleset(node, backend)) == converged


def test_running_the_boot_path_again_changes_nothing(node, backend, boot, ruleset):
    before = ruleset(node, backend)
    boot(node)
    after = ruleset(node, backend)
    assert after == before
    if backend != "nft":
        # One jump to the owned chain per family: the egress rules live in postrouting only.
        assert [line for line in after.splitlines() if "-j NODENET-" in line and line.startswith("-A POSTROUTING")] == \
            ["-A POSTROUTING -m comment --comment nodenet-nat -j NODENET-POSTROUTING"] * 2
