# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The persisted files and the boot path that loads them (roles/persist/files/nodenet-nat-restore.sh).

Offline: what the files hold. Tests marked ``netns`` converge real rules with the engine inside a throwaway
network namespace (``unshare --net``, held open by a ``sleep``; it disappears with it), take the ruleset away
as a reboot does, run the loader, and compare: the rules come back as the engine wrote them, and loading
again changes nothing. The host's own ruleset is never touched.
"""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re
import shutil

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import IptablesBackend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import canonical_order, config_entries, run_nat_rules
from ansible_collections.nodenet.nat.plugins.module_utils.persistence import (
    DEFAULT_PERSIST_PATHS, PERSIST_HEADER, persist, persist_files, persist_paths, state_token,
)
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RecordStore

from support import FakeHost, Netns

LOADER = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "roles", "persist", "files", "nodenet-nat-restore.sh")
# Both families, three chains, a DNAT cascade and a map-shaped (NodePort-like) rule.
CONFIG = [
    dict(name="egress-v4", type="masquerade", source=["10.244.0.0/16"], destination=["10.244.0.0/16"], destination_negate=True,
         random_fully=True),
    dict(name="egress-v6", type="masquerade", source=["fd00:10:244::/48"], out_interface="eth0"),
    dict(name="web-mark", type="mark", chain="prerouting", destination_type="local", protocol="tcp", destination_ports=[30080],
         set_mark="0x4000/0x4000"),
    dict(name="web", type="dnat", destination_type="local", protocol="tcp", destination_ports=[30080],
         to_destination=["10.244.1.10:8080", "10.244.2.11:8080"]),
    dict(name="web-local", type="dnat", chain="output", destination=["10.96.0.10"], protocol="tcp", destination_ports=[80],
         to_destination=["10.244.1.10:8080"]),
    dict(name="masquerade-marked", type="masquerade", mark="0x4000/0x4000"),
]
BACKENDS = ("nft", "iptables", "iptables-legacy")
VARIANT = {"iptables": "nft", "iptables-legacy": "legacy"}
BUILTIN = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")


def desired(backend, config=None):
    """The entries the engine persists for ``config`` (default CONFIG)."""
    return backend.normalize(canonical_order(config_entries(backend, CONFIG if config is None else config, {})))


def loader_line(text):
    return text.splitlines()[1]


# ---------------------------------------------------------------- the files

def test_nft_file_holds_both_families_and_names_nft_as_its_loader():
    backend = NftBackend()
    files = persist_files(backend, desired(backend), None)
    assert list(files) == [DEFAULT_PERSIST_PATHS["nft"]]
    text = files[DEFAULT_PERSIST_PATHS["nft"]]
    assert text.startswith(PERSIST_HEADER) and loader_line(text) == "# nodenet-nat-restore: nft"
    for table in ("ip nodenet_nat", "ip6 nodenet_nat"):
        # Each table is deleted and created again, so loading the file twice gives the same tables.
        assert "add table %s\ndelete table %s\ntable %s {" % (table, table, table) in text
    # The marker chain is named after the rules, not after a run.
    assert "\tchain state_%s {" % state_token(desired(backend)) in text


def test_iptables_files_name_the_tools_of_the_variant_and_family_in_use():
    binaries = {"ipv4": ("/usr/sbin/iptables-legacy-save", "/usr/sbin/iptables-legacy-restore"),
                "ipv6": ("/usr/sbin/ip6tables-legacy-save", "/usr/sbin/ip6tables-legacy-restore")}
    backend = IptablesBackend("legacy", binaries=binaries)
    files = persist_files(backend, desired(backend), "/etc/x/nat.rules")
    assert sorted(files) == ["/etc/x/nat.rules", "/etc/x/nat.rules6"]
    assert loader_line(files["/etc/x/nat.rules"]) == \
        "# nodenet-nat-restore: /usr/sbin/iptables-legacy-restore /usr/sbin/iptables-legacy-save"
    assert loader_line(files["/etc/x/nat.rules6"]) == \
        "# nodenet-nat-restore: /usr/sbin/ip6tables-legacy-restore /usr/sbin/ip6tables-legacy-save"
    assert "-I POSTROUTING 1 -m comment --comment nodenet-nat -j NODENET-POSTROUTING" in files["/etc/x/nat.rules"]
    assert '"egress-v6"' in files["/etc/x/nat.rules6"] and '"egress-v6"' not in files["/etc/x/nat.rules"]


def test_default_paths():
    assert persist_paths(NftBackend()) == {"ipv4": "/etc/nftables.d/nodenet-nat.nft", "ipv6": "/etc/nftables.d/nodenet-nat.nft"}
    assert persist_paths(IptablesBackend("nft")) == {"ipv4": "/etc/iptables/nodenet-nat.rules", "ipv6": "/etc/iptables/nodenet-nat.rules6"}


def test_the_marker_follows_the_rules():
    backend = NftBackend()
    assert state_token(desired(backend)) == state_token(desired(backend))
    assert state_token(desired(backend)) != state_token(desired(backend, CONFIG[:-1]))
    assert re.match("^[0-9a-f]{16}$", state_token(desired(backend)))


def test_persist_writes_what_differs_and_nothing_in_check_mode(tmp_path):
    backend = NftBackend()
    path = str(tmp_path / "etc" / "nat.nft")
    assert persist(backend, desired(backend), path, check_mode=True) == [path]
    assert not os.path.exists(path)
    assert persist(backend, desired(backend), path, check_mode=False) == [path]
    assert persist(backend, desired(backend), path, check_mode=False) == []
    assert persist(backend, desired(backend, CONFIG[:1]), path, check_mode=True) == [path]


# ---------------------------------------------------------------- the boot path on real netfilter

def _netns_available():
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "nsenter", "nft", "bash", "flock")):
        return False
    return all(shutil.which("%s-%s-%s" % (prefix, variant, tool)) for prefix in ("iptables", "ip6tables")
               for variant in ("nft", "legacy") for tool in ("save", "restore"))


netns = pytest.mark.skipif(not _netns_available(), reason="needs root, unshare, nsenter, nft and iptables-nft/-legacy")


class Node(object):
    """A throwaway network namespace standing for a node: commands, the engine and the loader run inside it."""

    def __init__(self, tmp_path, backend):
        self.backend = backend
        self.files = dict((kind, str(tmp_path / "etc" / os.path.basename(path))) for kind, path in DEFAULT_PERSIST_PATHS.items())
        self.run_dir = str(tmp_path / "run")
        self.netns = Netns(env=dict(os.environ, NODENET_NAT_RUN_DIR=self.run_dir))
        self.namespace = self.netns.path
        # The loader's lock is the engine's: both use <run dir>/netns-<inode of the namespace>.
        self.store = RecordStore(os.path.join(self.run_dir, "netns-%d" % os.stat(self.namespace).st_ino))

    def close(self):
        self.netns.close()

    def run_command(self, argv, data=None):
        return self.netns.run(argv, data)

    def sh(self, script):
        rc, out, err = self.run_command(["bash", "-ec", script])
        assert rc == 0, err
        return out

    def nat_rules(self, state, config=None, persist_path=None):
        persist_path = persist_path or self.files["nft" if self.backend == "nft" else "iptables"]
        params = dict(state=state, config=config, backend=self.backend, scope=None, running_config=None, persist=True,
                      persist_path=persist_path, result_rules="all")
        return run_nat_rules(params, FakeHost(self.run_command, which=shutil.which), store=self.store)

    def boot_files(self):
        return [self.files["nft"], self.files["iptables"], self.files["iptables"] + "6"]

    def load(self, *files):
        """(rc, stdout, stderr) of the loader, as nodenet-nat.service runs it."""
        return self.run_command(["bash", LOADER] + list(files or self.boot_files()))

    def forget(self):
        """What a reboot takes: the whole ruleset (nft, iptables-nft) and the legacy nat tables."""
        self.sh("nft flush ruleset" if self.backend != "iptables-legacy" else
                "for tool in iptables-legacy ip6tables-legacy; do $tool -t nat -F; $tool -t nat -X; done")

    def listing(self):
        """The ruleset without counters: nft's, or both families' nat tables of the iptables variant."""
        if self.backend == "nft":
            return self.sh("nft -s list ruleset")
        return self.sh("for tool in iptables-%s ip6tables-%s; do $tool -w -t nat -S; done" % ((VARIANT[self.backend],) * 2))


@pytest.fixture(name="node_of")
def fixture_node_of(tmp_path):
    nodes = []

    def node_of(backend):
        nodes.append(Node(tmp_path, backend))
        return nodes[-1]
    yield node_of
    for node in nodes:
        node.close()


def _unmarked(listing):
    return re.sub(r"(state_|NODENET-RUN-)[0-9a-f]+", r"\1", listing)


def _jumps(listing):
    return [line for line in listing.splitlines() if re.match(r"-A (%s) .*-j NODENET-" % "|".join(BUILTIN), line)]


@netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_boot_path_brings_back_what_the_engine_converged_and_loading_again_changes_nothing(backend, node_of):
    node = node_of(backend)
    converged = node.nat_rules("overridden", CONFIG)
    assert converged["changed"] and converged["persisted"]
    gathered = node.nat_rules("gathered")["gathered"]
    converged_listing = node.listing()

    node.forget()
    assert node.nat_rules("gathered")["gathered"] == []
    rc, out, err = node.load()
    assert rc == 0, err
    assert out.count("nodenet-nat-restore: loaded") == (1 if backend == "nft" else 2)

    # The rules are back as the engine wrote them: a run finds nothing to change, no drift, same files.
    assert node.nat_rules("gathered")["gathered"] == gathered
    again = node.nat_rules("merged", [])
    assert not again["changed"] and "drift" not in again and again["persisted"] == []
    loaded = node.listing()
    # Only the marker chains differ (iptables-legacy has none): the run's token before, the rules' digest after
    # (which the run above recorded).
    assert _unmarked(loaded) == _unmarked(converged_listing)
    if backend == "nft":
        assert node.store.load("nft").stamp == state_token(desired(NftBackend()))
    elif backend == "iptables":
        token = state_token(desired(IptablesBackend("nft")))
        assert node.store.load("iptables").stamp == "ipv4=%s ipv6=%s" % (token, token)

    rc, dummy, err = node.load()
    assert rc == 0, err
    assert node.listing() == loaded
    if backend != "nft":
        # One jump per built-in chain with owned rules: IPv4 prerouting, output, postrouting; IPv6 postrouting.
        assert sorted(line.split()[1] for line in _jumps(loaded)) == ["OUTPUT", "POSTROUTING", "POSTROUTING", "PREROUTING"]


@netns
@pytest.mark.parametrize("backend", ("iptables", "iptables-legacy"))
def test_loader_leaves_one_jump_per_chain_and_foreign_rules_alone(backend, node_of):
    node = node_of(backend)
    node.nat_rules("overridden", CONFIG)
    variant = VARIANT[backend]
    # Foreign rules on top, then the IPv4 file loaded once more as it is (two jumps in each of its chains), then the loader.
    node.sh("iptables-{0} -w -t nat -I POSTROUTING 1 -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n"
            "iptables-{0} -w -t nat -N DOCKER\n"
            "iptables-{0} -w -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER\n"
            "iptables-{0}-restore -w --noflush < {1}\n".format(variant, node.files["iptables"]))
    assert len(_jumps(node.listing())) == 3 * 2 + 1
    rc, dummy, err = node.load()
    assert rc == 0, err
    listing = node.listing()
    assert sorted(line.split()[1] for line in _jumps(listing)) == ["OUTPUT", "POSTROUTING", "POSTROUTING", "PREROUTING"]
    assert "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" in listing
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER" in listing
    assert not node.nat_rules("merged", [])["changed"]


@netns
def test_loader_skips_missing_files_reports_one_it_cannot_load_and_loads_the_others(tmp_path, node_of):
    node = node_of("nft")
    node.nat_rules("overridden", CONFIG)
    node.forget()
    unknown = tmp_path / "unknown.rules"
    unknown.write_text(PERSIST_HEADER + "*nat\nCOMMIT\n")
    rc, out, err = node.load(str(tmp_path / "missing.rules"), str(unknown), node.files["nft"])
    assert rc == 1
    assert "%s: its second line does not say how to load it" % unknown in err
    assert out == "nodenet-nat-restore: loaded %s\n" % node.files["nft"]
    assert len(node.nat_rules("gathered")["gathered"]) == len(CONFIG)


@netns
def test_loader_of_a_family_without_rules_changes_nothing(node_of):
    node = node_of("iptables-legacy")
    node.nat_rules("overridden", CONFIG[:1])
    ipv6_file = node.files["iptables"] + "6"
    with open(ipv6_file) as handle:
        assert "*nat" not in handle.read()
    before = node.listing()
    rc, dummy, err = node.load(ipv6_file)
    assert rc == 0, err
    assert node.listing() == before
