"""Backend detection against recorded listings (tests/unit/fixtures/iptables, see record.sh): no binaries run."""
import os

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import (
    BackendUnavailable, mixed_backends, select_backend, xtables_listings,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import IptablesBackend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "iptables")
SBIN = "/usr/sbin/"
XTABLES = ["%s-%s-%s" % (prefix, variant, tool) for prefix in ("iptables", "ip6tables")
           for variant in ("nft", "legacy") for tool in ("save", "restore")]
DEBIAN = XTABLES + ["nft"]


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


class FakeHost(object):
    """Installed binaries and what their read-only commands print; any other command fails the test."""

    def __init__(self, binaries, saves=None, nft_chains='{"nftables": []}', versions=None):
        self.binaries = binaries
        self.saves = saves or {}
        self.nft_chains = nft_chains
        self.versions = versions or {}
        self.calls = []

    def which(self, name):
        return SBIN + name if name in self.binaries else None

    def run_command(self, argv):
        self.calls.append(argv)
        name = argv[0][len(SBIN):]
        if argv[1:] == ["--version"]:
            return 0, self.versions[name], ""
        if argv[1:] == ["-j", "list", "chains"] and name == "nft":
            return 0, self.nft_chains, ""
        assert name.endswith("-save") and argv[1:] == [], "unexpected command %r" % argv
        return 0, self.saves.get(name, ""), ""


def select(host, requested="auto"):
    return select_backend(requested, host.run_command, host.which)


def assert_iptables(backend, variant, prefix=SBIN, infix=None):
    infix = "-%s" % variant if infix is None else infix
    assert isinstance(backend, IptablesBackend) and backend.variant == variant
    assert backend.binaries == {
        "ipv4": (prefix + "iptables%s-save" % infix, prefix + "iptables%s-restore" % infix),
        "ipv6": (prefix + "ip6tables%s-save" % infix, prefix + "ip6tables%s-restore" % infix)}


def test_clean_host_with_nft_gets_nft():
    backend, reason = select(FakeHost(DEBIAN))
    assert isinstance(backend, NftBackend)
    assert reason == ("nft is installed and neither legacy iptables rules nor kubelet chains call for iptables "
                      "(legacy iptables holds 0 rules, iptables-nft 0)")


def test_kubelet_hint_chain_in_iptables_nft_selects_iptables_nft():
    host = FakeHost(DEBIAN, {"iptables-nft-save": fixture("kube-nft.all.save")})
    backend, reason = select(host)
    assert_iptables(backend, "nft")
    assert backend.name == "iptables"
    assert reason == "kubelet chain KUBE-IPTABLES-HINT found in iptables-nft"


def test_legacy_rules_outnumbering_nft_select_legacy_without_creating_tables():
    host = FakeHost(DEBIAN, {"iptables-legacy-save": fixture("docker-legacy.all.save")})
    backend, reason = select(host)
    assert_iptables(backend, "legacy")
    assert reason == "legacy iptables holds 6 rules, iptables-nft 0"
    # Legacy listings never name a table: "-t nat" would create it in the kernel.
    assert sorted(argv for argv in host.calls if "legacy" in argv[0]) == [[SBIN + "ip6tables-legacy-save"], [SBIN + "iptables-legacy-save"]]


def test_owned_nft_table_is_kept_although_legacy_holds_more_rules():
    host = FakeHost(DEBIAN, {"iptables-legacy-save": fixture("docker-legacy.all.save")}, nft_chains=fixture("nft-owned.chains"))
    backend, reason = select(host)
    assert isinstance(backend, NftBackend)
    assert reason == "nft already holds this collection's table nodenet_nat; kept it (legacy iptables holds 6 rules, iptables-nft 0)"


def test_owned_chains_in_iptables_nft_are_kept_although_nft_is_installed():
    host = FakeHost(DEBIAN, {"iptables-nft-save": fixture("owned-nft.ipv4.save")}, nft_chains=fixture("nft-foreign.chains"))
    backend, reason = select(host)
    assert_iptables(backend, "nft")
    assert reason == "iptables already holds this collection's NODENET-* chains; kept it (legacy iptables holds 0 rules, iptables-nft 14)"


def test_owned_chains_in_legacy_are_kept_over_kubelet_hint_in_nft():
    host = FakeHost(DEBIAN, {"iptables-legacy-save": "*nat\n:NODENET-POSTROUTING - [0:0]\nCOMMIT\n",
                             "iptables-nft-save": fixture("kube-nft.all.save")})
    backend, reason = select(host)
    assert_iptables(backend, "legacy")
    assert reason == "iptables-legacy already holds this collection's NODENET-* chains; kept it (legacy iptables holds 0 rules, iptables-nft 4)"


@pytest.mark.parametrize("binaries, variant, reason", [
    (XTABLES, "nft", "nft binary missing; iptables-nft is installed"),
    ([name for name in XTABLES if "legacy" in name], "legacy", "neither nft nor iptables-nft is installed"),
])
def test_without_nft_binary_iptables_is_the_fallback(binaries, variant, reason):
    backend, found = select(FakeHost(binaries))
    assert_iptables(backend, variant)
    assert found == reason


@pytest.mark.parametrize("version, variant", [
    ("iptables-save v1.8.9 (legacy)", "legacy"),
    ("iptables-save v1.6.1", "legacy"),           # before 1.8 there was only legacy
    ("iptables-save v1.8.9 (nf_tables)", "nft"),
])
def test_plain_binary_names_count_for_the_variant_their_version_names(version, variant):
    plain = ["iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"]
    host = FakeHost(plain, versions=dict((name, version) for name in plain))
    backend, dummy = select(host)
    assert_iptables(backend, variant, infix="")


def test_recorded_version_banners_name_their_variant():
    for name, variant in (("version-legacy.txt", "legacy"), ("version-nft.txt", "nft")):
        plain = ["iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"]
        host = FakeHost(plain, versions=dict((binary, fixture(name)) for binary in plain))
        assert_iptables(select(host, "iptables" if variant == "nft" else "iptables-legacy")[0], variant, infix="")


@pytest.mark.parametrize("requested, binaries, expected", [
    ("nft", DEBIAN, NftBackend),
    ("iptables", DEBIAN, "nft"),
    ("iptables-legacy", DEBIAN, "legacy"),
])
def test_requested_backend_is_used_as_is(requested, binaries, expected):
    host = FakeHost(binaries, {"iptables-legacy-save": fixture("docker-legacy.all.save")}, nft_chains=fixture("nft-owned.chains"))
    backend, reason = select(host, requested)
    assert reason == "requested"
    if expected is NftBackend:
        assert isinstance(backend, NftBackend)
    else:
        assert_iptables(backend, expected)


@pytest.mark.parametrize("requested, binaries, message", [
    ("nft", XTABLES, "backend: nft was requested but the nft binary is not installed"),
    ("iptables-legacy", [name for name in DEBIAN if "legacy" not in name],
     "backend: iptables-legacy was requested but its save/restore binaries (iptables and ip6tables) are not installed"),
    ("iptables", [name for name in DEBIAN if name != "ip6tables-nft-restore"],
     "backend: iptables was requested but its save/restore binaries (iptables and ip6tables) are not installed"),
    ("auto", [], "backend: auto found no usable backend: install nft (nftables) or iptables"),
    ("ipfw", DEBIAN, "backend: 'ipfw' is not one of auto, nft, iptables, iptables-legacy"),
])
def test_unusable_backend_fails_with_a_clear_message(requested, binaries, message):
    with pytest.raises(BackendUnavailable) as error:
        select(FakeHost(binaries), requested)
    assert str(error.value) == message


def test_mixed_backends_counts_rules_of_both_front_ends():
    host = FakeHost(DEBIAN, {"iptables-legacy-save": fixture("docker-legacy.all.save"), "iptables-nft-save": fixture("kube-nft.all.save")})
    assert mixed_backends(xtables_listings(host.which, host.run_command)) == {"legacy_rules": 6, "nft_rules": 4, "mixed": True}
    clean = FakeHost(DEBIAN)
    assert mixed_backends(xtables_listings(clean.which, clean.run_command)) == {"legacy_rules": 0, "nft_rules": 0, "mixed": False}
