"""iptables backend: render -> iptables-restore -> iptables-save -> parse, offline and in throwaway netns.

Offline tests read outputs recorded by tests/unit/fixtures/iptables/record.sh. Tests marked
``netns`` run the real binaries inside ``unshare --net`` (a namespace that disappears with the
process), so the host's ruleset is never touched.
"""
import ipaddress
import os
import shlex
import shutil
import subprocess
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import HostState, content
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import IptablesBackend, UnsupportedRule, lines as iptables_lines
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables.save import owned_objects, rule_counters
from ansible_collections.nodenet.nat.plugins.module_utils.model import (
    CHAINS_BY_TYPE, CT_STATES, FAMILIES, IN_INTERFACE_CHAINS, OUT_INTERFACE_CHAINS, PROTOCOLS, Endpoint, Mark, PortRange,
    RuleError, make_rule, normalize_ct_states, normalize_networks, normalize_port_ranges,
)
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import canonical_order
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RunRecord

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "iptables")
VARIANTS = ("nft", "legacy")
NO_STATE = HostState([], {})


def entries(backend, rules):
    """Entries of ``rules`` in the order the engine renders them."""
    return canonical_order([backend.entry(rule) for rule in rules])


def contents(entries_list):
    return [content(entry) for entry in entries_list]


def render(backend, rules, state=NO_STATE):
    return backend.render(entries(backend, rules), state, "token")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def net(text):
    return ipaddress.ip_network(text)


def addr(text):
    return ipaddress.ip_address(text)


# The rules recorded in owned-*.ipv4.save / owned-*.ipv6.save (see record.sh), in host order.
RECORDED_V4 = [
    make_rule(name="mark-external", type="mark", chain="prerouting", family="ipv4", mark=Mark(0x4000, 0x4000), mark_negate=True,
              destination_type="local", set_mark=Mark(0x4000, 0x4000)),
    make_rule(name="web", type="dnat", chain="prerouting", family="ipv4", protocol="tcp",
              destination_ports=(PortRange(80, 80), PortRange(443, 445)), destination_type="local",
              to_destination=(Endpoint(addr("10.244.1.2"), 8080), Endpoint(addr("10.244.1.3"), 8080), Endpoint(addr("10.244.1.4"), None))),
    make_rule(name="pods-direct", type="return", chain="postrouting", family="ipv4", source=(net("10.244.0.0/16"),),
              destination=(net("10.244.0.0/16"),)),
    make_rule(name="egress", type="masquerade", chain="postrouting", family="ipv4", source=(net("10.244.0.0/16"), net("10.245.0.0/16")),
              out_interface="eth0", random_fully=True),
    make_rule(name="masq-marked", type="masquerade", chain="postrouting", family="ipv4", mark=Mark(0x4000, 0x4000), ct_state=("dnat",)),
    make_rule(name="snat-range", type="snat", chain="postrouting", family="ipv4", source=(net("192.168.7.1/32"),), protocol="udp",
              to_source=(addr("198.51.100.10"), addr("198.51.100.12")), to_ports=PortRange(1024, 65535)),
]
RECORDED_V6 = [
    make_rule(name="dns6", type="dnat", chain="output", family="ipv6", destination=(net("fd00:1::1/128"),), protocol="udp",
              destination_ports=(PortRange(53, 53),), to_destination=(Endpoint(addr("fd00:2::1"), 5353), Endpoint(addr("fd00:2::2"), None))),
    make_rule(name="snat6", type="snat", chain="postrouting", family="ipv6", source=(net("fd00:2::/64"),), source_negate=True, protocol="tcp",
              to_source=(addr("fd00::1"), addr("fd00::9")), to_ports=PortRange(1000, 2000), random_fully=True),
    make_rule(name="masq6", type="masquerade", chain="postrouting", family="ipv6"),
]
FOREIGN_V4 = ["-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER", "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
              "-A DOCKER -i docker0 -j RETURN"]


# ---------------------------------------------------------------- offline: parse recorded output

@pytest.mark.parametrize("variant", VARIANTS)
def test_parse_recorded_listing_gives_owned_rules_only(variant):
    state = IptablesBackend(variant).parse({"ipv4": fixture("owned-%s.ipv4.save" % variant),
                                            "ipv6": fixture("owned-%s.ipv6.save" % variant)})
    assert contents(state.entries) == contents(entries(IptablesBackend(variant), RECORDED_V4 + RECORDED_V6))
    assert state.facts["unrecognized"] == []
    assert state.facts["ipv4"]["chains"] == ["NODENET-POSTROUTING", "NODENET-PREROUTING"]
    assert dict((chain, [spec for spec, dummy in jumps]) for chain, jumps in state.facts["ipv4"]["jumps"].items()) == {
        "PREROUTING": ["-m comment --comment nodenet-nat -j NODENET-PREROUTING"],
        "POSTROUTING": ["-m comment --comment nodenet-nat -j NODENET-POSTROUTING"]}


def test_parse_reads_only_the_nat_table_of_a_full_listing():
    state = IptablesBackend("legacy").parse({"ipv4": fixture("owned-legacy.all.save")})
    assert contents(state.entries) == contents(entries(IptablesBackend("legacy"), RECORDED_V4))


def test_parse_without_owned_objects_is_empty():
    state = IptablesBackend("nft").parse({"ipv4": fixture("kube-nft.all.save"), "ipv6": ""})
    others = state.facts["ipv4"].pop("others")
    assert state == HostState([], {"ipv4": {"chains": [], "jumps": {}}, "ipv6": {"chains": [], "jumps": {}, "others": 0}, "unrecognized": []})
    # kube-proxy's chains and rules in table nat count as other tools' objects (the table is not ours to remove).
    assert others == 6


def test_parse_reports_drift_it_cannot_express_as_rules():
    state = IptablesBackend("nft").parse({"ipv4": fixture("drift-nft.ipv4.save")})
    egress = make_rule(name="egress", type="masquerade", chain="postrouting", family="ipv4", source=(net("10.0.0.0/8"),))
    assert contents(state.entries) == contents(entries(IptablesBackend("nft"), [egress]))
    drift = "\n".join(state.facts["unrecognized"])
    for expected in ("NODENET-OLD: chain this collection does not use",
                     "NODENET-INPUT: owned chain without rules",
                     "NODENET-INPUT: expected one jump rule from INPUT, found 1",
                     "NODENET-POSTROUTING: expected one jump rule from POSTROUTING, found 2",
                     "cannot read '-s 10.0.0.0/8 -j ACCEPT'",
                     "cannot read '-m comment --comment odd -j MASQUERADE --random' (unsupported option --random"):
        assert expected in drift


def test_parse_reports_lines_of_one_rule_that_disagree():
    text = "\n".join([
        "*nat", ":NODENET-POSTROUTING - [0:0]", "-A POSTROUTING -m comment --comment nodenet-nat -j NODENET-POSTROUTING",
        "-A NODENET-POSTROUTING -s 10.0.0.0/8 -m comment --comment egress -j MASQUERADE",
        "-A NODENET-POSTROUTING -s 11.0.0.0/8 -m comment --comment egress -j MASQUERADE --random-fully", "COMMIT"])
    state = IptablesBackend("nft").parse({"ipv4": text})
    assert state.facts["unrecognized"] == ["ipv4 NODENET-POSTROUTING: rule 'egress' is not in the shape this collection writes"]


# ---------------------------------------------------------------- offline: render

def test_first_render_declares_chains_and_inserts_jumps_on_top():
    rule = make_rule(name="egress", type="masquerade", chain="postrouting", family="ipv4", source=(net("10.244.0.0/16"),),
                     destination=(net("10.0.0.0/8"),), destination_negate=True, random_fully=True)
    [transaction] = render(IptablesBackend("nft"), [rule])
    assert transaction.families == ("ipv4",)
    assert transaction.check_argv == ["iptables-nft-restore", "-w", "--test", "--noflush"]
    assert transaction.apply_argv == ["iptables-nft-restore", "-w", "--noflush"]
    assert transaction.text == (
        "*nat\n"
        ":NODENET-POSTROUTING - [0:0]\n"
        ":NODENET-RUN-token - [0:0]\n"
        "-I POSTROUTING 1 -m comment --comment nodenet-nat -j NODENET-POSTROUTING\n"
        '-A NODENET-POSTROUTING -s 10.244.0.0/16 ! -d 10.0.0.0/8 -m comment --comment "egress" -j MASQUERADE --random-fully\n'
        "COMMIT\n")


def test_legacy_variant_uses_legacy_binaries_for_both_families():
    backend = IptablesBackend("legacy")
    assert backend.name == "iptables-legacy"
    assert [backend.list_argv(family) for family in FAMILIES] == [["iptables-legacy-save", "-t", "nat"], ["ip6tables-legacy-save", "-t", "nat"]]
    [transaction] = render(backend, RECORDED_V6)
    assert transaction.apply_argv == ["ip6tables-legacy-restore", "-w", "--noflush"]


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="iptables variant must be one of legacy, nft, got 'xtables'"):
        IptablesBackend("xtables")


def test_render_against_recorded_state_edits_only_the_lines_that_differ():
    backend = IptablesBackend("nft")
    state = backend.parse({"ipv4": fixture("owned-nft.ipv4.save"), "ipv6": fixture("owned-nft.ipv6.save")})
    assert backend.render(state.entries, state, "token") == []
    changed = [rule._replace(random_fully=False) if rule.name == "egress" else rule for rule in RECORDED_V4] + RECORDED_V6
    [transaction] = render(backend, changed, state)
    assert transaction.text == (
        "*nat\n"
        ":NODENET-RUN-token - [0:0]\n"
        '-D NODENET-POSTROUTING -s 10.244.0.0/16 -o eth0 -m comment --comment "egress" -j MASQUERADE --random-fully\n'
        '-D NODENET-POSTROUTING -s 10.245.0.0/16 -o eth0 -m comment --comment "egress" -j MASQUERADE --random-fully\n'
        '-I NODENET-POSTROUTING 2 -s 10.244.0.0/16 -o eth0 -m comment --comment "egress" -j MASQUERADE\n'
        '-I NODENET-POSTROUTING 3 -s 10.245.0.0/16 -o eth0 -m comment --comment "egress" -j MASQUERADE\n'
        "COMMIT\n")


def test_changes_apart_in_a_long_chain_touch_only_their_own_lines():
    # One rule edited in the middle and one added at the end: only their lines, not everything between them.
    backend = IptablesBackend("nft")

    def service(index, port=8080):
        return make_rule(name="svc-%d" % index, type="dnat", chain="prerouting", family="ipv4", protocol="tcp",
                         destination_ports=(PortRange(10000 + index, 10000 + index),), destination_type="local",
                         to_destination=(Endpoint(addr("10.244.0.%d" % index), port),))

    before = [service(index) for index in range(200)]
    [first] = render(backend, before)
    state = backend.parse({"ipv4": first.text.replace("-I PREROUTING 1 ", "-A PREROUTING ")})
    after = [service(index, 9090 if index == 100 else 8080) for index in range(200)] + [service(200)]
    [transaction] = render(backend, after, state)
    assert transaction.text.splitlines() == [
        "*nat",
        ":NODENET-RUN-token - [0:0]",
        '-D NODENET-PREROUTING -p tcp -m tcp --dport 10100 -m addrtype --dst-type LOCAL -m comment --comment "svc-100" '
        "-j DNAT --to-destination 10.244.0.100:8080",
        '-I NODENET-PREROUTING 101 -p tcp -m tcp --dport 10100 -m addrtype --dst-type LOCAL -m comment --comment "svc-100" '
        "-j DNAT --to-destination 10.244.0.100:9090",
        '-I NODENET-PREROUTING 201 -p tcp -m tcp --dport 10200 -m addrtype --dst-type LOCAL -m comment --comment "svc-200" '
        "-j DNAT --to-destination 10.244.0.200:8080",
        "COMMIT"]


def test_render_nothing_removes_every_owned_object_and_nothing_else():
    backend = IptablesBackend("nft")
    state = backend.parse({"ipv4": fixture("owned-nft.ipv4.save")})
    [transaction] = backend.render([], state, "token")
    assert transaction.text == (
        "*nat\n"
        ":NODENET-POSTROUTING - [0:0]\n"
        ":NODENET-PREROUTING - [0:0]\n"
        "-D POSTROUTING -m comment --comment nodenet-nat -j NODENET-POSTROUTING\n"
        "-D PREROUTING -m comment --comment nodenet-nat -j NODENET-PREROUTING\n"
        "-X NODENET-POSTROUTING\n"
        "-X NODENET-PREROUTING\n"
        "COMMIT\n")


def test_render_nothing_on_a_clean_host_is_no_transaction():
    assert IptablesBackend("nft").render([], IptablesBackend("nft").parse({}), "token") == []


@pytest.mark.parametrize("field", ["source", "destination"])
def test_negated_match_of_several_networks_is_refused_naming_rule_and_field(field):
    rule = make_rule(name="egress", type="masquerade", chain="postrouting", family="ipv4",
                     **{field: (net("10.0.0.0/8"), net("192.168.0.0/16")), field + "_negate": True})
    with pytest.raises(UnsupportedRule, match=r"rule 'egress': %s_negate needs exactly one network in %s .* got 2" % (field, field)):
        IptablesBackend("nft").compile(rule)
    assert issubclass(UnsupportedRule, RuleError)


def test_dnat_cascade_probabilities_and_multiport_groups():
    ports = tuple(PortRange(port, port) for port in range(1000, 1040, 2))    # 20 ports: groups of 15 and 5
    rule = make_rule(name="svc", type="dnat", chain="prerouting", family="ipv4", protocol="tcp", destination_ports=ports,
                     to_destination=tuple(Endpoint(addr("10.0.0.%d" % host), 80) for host in (1, 2, 3)))
    [transaction] = render(IptablesBackend("nft"), [rule])
    lines = [line for line in transaction.text.splitlines() if line.startswith("-A")]
    assert len(lines) == 6
    assert [line.count(",") + 1 for line in lines] == [15, 15, 15, 5, 5, 5]
    probabilities = [shlex.split(line)[shlex.split(line).index("--probability") + 1] if "--probability" in line else None for line in lines]
    assert probabilities == ["0.3333333333", "0.5000000000", None] * 2


# ---------------------------------------------------------------- real binaries in a throwaway netns

def _netns_available():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return all(shutil.which("%s-%s-%s" % (prefix, variant, tool)) for prefix in ("iptables", "ip6tables")
               for variant in VARIANTS for tool in ("save", "restore"))


netns = pytest.mark.skipif(not _netns_available(), reason="needs root, unshare and iptables-nft/-legacy binaries")


class Netns(object):
    """Runs restore scripts, then the backend's list commands, in one fresh network namespace."""

    def __init__(self, backend, tmp_path):
        self.backend = backend
        self.tmp_path = tmp_path

    def run(self, steps):
        """steps: [(argv, stdin text)] applied in order; returns the list outputs {family: text}."""
        commands = []
        for index, (argv, text) in enumerate(steps):
            path = self.tmp_path / ("step%d.rules" % index)
            path.write_text(text)
            commands.append("%s < %s" % (" ".join(shlex.quote(arg) for arg in argv), shlex.quote(str(path))))
        marker = "@@family@@"
        for family in FAMILIES:
            argv = self.backend.list_argv(family)
            commands.append("echo %s%s && %s" % (marker, family, " ".join(shlex.quote(arg) for arg in argv)))
        result = subprocess.run(["unshare", "--net", "--", "sh", "-ec", "\n".join(commands)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        assert result.returncode == 0, result.stderr
        outputs = {}
        for chunk in result.stdout.split(marker)[1:]:
            family, dummy, text = chunk.partition("\n")
            outputs[family] = text
        return outputs

    def apply(self, rules, before_steps=()):
        """Apply ``before_steps``, read the state, render ``rules`` against it, check and apply: (outputs, transactions)."""
        before = self.backend.parse(self.run(before_steps))
        transactions = self.backend.render(entries(self.backend, rules), before, "token")
        steps = list(before_steps)
        for transaction in transactions:
            steps += [(transaction.check_argv, transaction.text), (transaction.apply_argv, transaction.text)]
        return self.run(steps), steps


def _restore_argv(variant, family="ipv4"):
    return ["%s-%s-restore" % ("iptables" if family == "ipv4" else "ip6tables", variant), "-w", "--noflush"]


def _rule_lines(text):
    return [line for line in text.splitlines() if line.startswith("-A")]


@netns
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_both_families_and_second_render_changes_nothing(variant, tmp_path):
    backend = IptablesBackend(variant)
    lab = Netns(backend, tmp_path)
    rules = RECORDED_V4 + RECORDED_V6
    outputs, steps = lab.apply(rules)
    state = backend.parse(outputs)
    assert contents(state.entries) == contents(entries(backend, rules))
    assert state.facts["unrecognized"] == []
    # The next run finds nothing to do, and a full rewrite on top of the first gives the same listing: no duplicate jump.
    assert backend.render(entries(backend, rules), state, "token") == []
    again = backend.render(entries(backend, rules), state._replace(facts=dict(state.facts, unrecognized=["force a rewrite"])), "token")
    assert all("-I " not in transaction.text for transaction in again)
    outputs_again = lab.run(steps + [(transaction.apply_argv, transaction.text) for transaction in again])
    assert [_rule_lines(outputs_again[family]) for family in FAMILIES] == [_rule_lines(outputs[family]) for family in FAMILIES]


@netns
@pytest.mark.parametrize("variant", VARIANTS)
def test_foreign_rules_survive_a_new_ruleset_and_the_removal_of_all_rules(variant, tmp_path):
    backend = IptablesBackend(variant)
    lab = Netns(backend, tmp_path)
    foreign = [(_restore_argv(variant), "*nat\n:DOCKER - [0:0]\n%s\nCOMMIT\n" % "\n".join(FOREIGN_V4))]
    outputs, steps = lab.apply(RECORDED_V4, foreign)
    assert set(FOREIGN_V4) <= set(_rule_lines(outputs["ipv4"]))
    # A different ruleset replaces ours; then nothing removes every owned object.
    outputs, steps = lab.apply([RECORDED_V4[0]], steps)
    assert contents(backend.parse(outputs).entries) == contents(entries(backend, [RECORDED_V4[0]]))
    assert set(FOREIGN_V4) <= set(_rule_lines(outputs["ipv4"]))
    outputs, dummy = lab.apply([], steps)
    assert _rule_lines(outputs["ipv4"]) == FOREIGN_V4
    assert "NODENET" not in outputs["ipv4"] + outputs["ipv6"]


@netns
def test_render_repairs_drift_recorded_on_a_host(tmp_path):
    backend = IptablesBackend("nft")
    lab = Netns(backend, tmp_path)
    wanted = [make_rule(name="egress", type="masquerade", chain="postrouting", family="ipv4", source=(net("10.0.0.0/8"),))]
    outputs, dummy = lab.apply(wanted, [(_restore_argv("nft"), fixture("drift-nft.ipv4.save"))])
    state = backend.parse(outputs)
    assert (contents(state.entries), state.facts["unrecognized"]) == (contents(entries(backend, wanted)), [])
    assert state.facts["ipv4"]["chains"] == ["NODENET-POSTROUTING", "NODENET-RUN-token"]


@netns
def test_check_fails_before_anything_changes(tmp_path):
    """--test refuses a script the kernel would refuse (here: SNAT with ports but no protocol)."""
    rule = make_rule(name="bad", type="snat", chain="postrouting", family="ipv4",
                     to_source=(addr("192.0.2.1"), addr("192.0.2.1")), to_ports=PortRange(1000, 2000))
    [transaction] = render(IptablesBackend("nft"), [rule])
    path = tmp_path / "bad.rules"
    path.write_text(transaction.text)
    result = subprocess.run(["unshare", "--net", "--", "sh", "-c", '"$0" "$@" < "%s"; iptables-nft-save -t nat' % path]
                            + transaction.check_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert "Need TCP, UDP, SCTP or DCCP with port specification" in result.stderr
    assert "NODENET" not in result.stdout


# ---------------------------------------------------------------- property: any valid rule list round-trips

def _networks(family):
    bits, network_class = (32, ipaddress.IPv4Network) if family == "ipv4" else (128, ipaddress.IPv6Network)
    network = st.builds(lambda value, prefix: network_class((value, prefix), strict=False), st.integers(0, 2 ** bits - 1),
                        st.integers(8 if family == "ipv4" else 16, bits))
    return st.lists(network, max_size=3).map(normalize_networks)


def _addresses(family):
    return st.integers(1, 2 ** (32 if family == "ipv4" else 128) - 2).map(
        lambda value: ipaddress.IPv4Address(value) if family == "ipv4" else ipaddress.IPv6Address(value))


PORT_RANGES = st.tuples(st.integers(1, 65535), st.integers(0, 50)).map(lambda item: PortRange(item[0], min(65535, item[0] + item[1])))
MARKS = st.tuples(st.integers(0, 0xffffffff), st.integers(0, 0xffffffff)).map(lambda item: Mark(item[0] & item[1], item[1]))
INTERFACES = st.sampled_from(["eth0", "cni0", "veth+", "br-1a2b"])


@st.composite
def nat_rules(draw, name):
    family = draw(st.sampled_from(FAMILIES))
    rule_type = draw(st.sampled_from(sorted(CHAINS_BY_TYPE)))
    chain = draw(st.sampled_from(CHAINS_BY_TYPE[rule_type]))
    protocol = draw(st.one_of(st.none(), st.sampled_from(PROTOCOLS)))
    fields = dict(name=name, type=rule_type, chain=chain, family=family, protocol=protocol)
    for field in ("source", "destination"):
        fields[field] = draw(_networks(family))
        fields[field + "_negate"] = len(fields[field]) == 1 and draw(st.booleans())
    if draw(st.booleans()):
        fields.update(destination_type="local", destination_type_negate=draw(st.booleans()))
    if chain in IN_INTERFACE_CHAINS:
        fields["in_interface"] = draw(st.one_of(st.none(), INTERFACES))
    if chain in OUT_INTERFACE_CHAINS:
        fields["out_interface"] = draw(st.one_of(st.none(), INTERFACES))
    if protocol:
        fields["destination_ports"] = normalize_port_ranges(draw(st.lists(PORT_RANGES, max_size=20)))
    if draw(st.booleans()):
        fields.update(mark=draw(MARKS), mark_negate=draw(st.booleans()))
    fields["ct_state"] = normalize_ct_states(draw(st.lists(st.sampled_from(CT_STATES), max_size=3)))
    to_ports = draw(st.one_of(st.none(), PORT_RANGES)) if protocol else None
    if rule_type in ("masquerade", "snat"):
        fields.update(to_ports=to_ports, random_fully=draw(st.booleans()))
    if rule_type == "snat":
        fields["to_source"] = tuple(sorted(draw(st.lists(_addresses(family), min_size=2, max_size=2))))
    elif rule_type == "dnat":
        ports = st.one_of(st.none(), st.integers(1, 65535)) if protocol else st.none()
        fields["to_destination"] = tuple(draw(st.lists(st.builds(Endpoint, _addresses(family), ports), min_size=1, max_size=4)))
    elif rule_type == "mark":
        fields["set_mark"] = draw(MARKS)
    return make_rule(**fields)


RULE_LISTS = st.integers(0, 6).flatmap(lambda count: st.tuples(*[nat_rules("rule-%d" % index) for index in range(count)]))


@st.composite
def changed_rule_lists(draw):
    """A rule list and a second one with some rules edited, dropped or added (the delta path)."""
    first = list(draw(RULE_LISTS))
    second = [draw(nat_rules(rule.name)) if draw(st.integers(0, 2)) == 0 else rule for rule in first if draw(st.integers(0, 4))]
    return first, second + [draw(nat_rules("added-%d" % index)) for index in range(draw(st.integers(0, 2)))]


def segments_from(threshold, spacing=2):
    """Segments for hook chains of more than ``threshold`` lines, about one rule in ``spacing`` ending one."""
    return mock.patch.multiple(iptables_lines, SEGMENT_THRESHOLD=threshold, SEGMENT_SPACING=spacing)


@netns
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=changed_rule_lists(), variant=st.sampled_from(VARIANTS), threshold=st.sampled_from([2048, 3, 0]))
def test_generated_rules_round_trip_and_change_through_the_kernel(pair, variant, threshold, tmp_path):
    first, second = pair
    backend = IptablesBackend(variant)
    lab = Netns(backend, tmp_path)
    with segments_from(threshold):
        outputs, steps = lab.apply(first)
        state = backend.parse(outputs)
        assert contents(state.entries) == contents(entries(backend, first))
        assert state.facts["unrecognized"] == []
        outputs, dummy = lab.apply(second, steps)
        state = backend.parse(outputs)
        assert contents(state.entries) == contents(entries(backend, second))
        assert state.facts["unrecognized"] == []


def _services(count, port=8080, chain="prerouting"):
    return [make_rule(name="svc-%d" % index, type="dnat", chain=chain, family="ipv4", protocol="tcp",
                      destination_ports=(PortRange(10000 + index, 10000 + index),), destination_type="local",
                      to_destination=(Endpoint(addr("10.244.0.%d" % index), port),)) for index in range(count)]


def _segments(text):
    return sorted(set(word for word in text.split() if word.startswith("NODENET-PRE-")))


@netns
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_long_chain_is_segmented_and_a_change_refills_only_its_segment(variant, tmp_path):
    backend = IptablesBackend(variant)
    lab = Netns(backend, tmp_path)
    exempt = make_rule(name="exempt", type="return", chain="prerouting", family="ipv4", source=(net("10.99.0.0/16"),))
    before = _services(20) + [exempt] + _services(40)[20:]
    with segments_from(10, spacing=4):
        outputs, steps = lab.apply(before)
        listing = outputs["ipv4"]
        segments = _segments(listing)
        assert len(segments) >= 4
        # The hook chain holds the jumps in order and the return rule itself, which leaves the owned rules from there.
        hook_lines = [line for line in listing.splitlines() if line.startswith("-A NODENET-PREROUTING ")]
        assert any('"exempt"' in line or "exempt" in line.split() for line in hook_lines)
        assert all(" -j NODENET-PRE-" in line or "exempt" in line for line in hook_lines)
        state = backend.parse(outputs)
        assert contents(state.entries) == contents(entries(backend, before)) and not state.facts["unrecognized"]

        after = [_services(40, port=9090)[index] if index == 33 else rule for index, rule in enumerate(_services(40))]
        after = after[:20] + [exempt] + after[20:]
        [transaction] = backend.render(entries(backend, after), state, "token")
        declared = [line for line in transaction.text.splitlines() if line.startswith(":NODENET-PRE-")]
        assert len(declared) == 1 and declared[0][1:].split()[0] in segments
        assert "NODENET-PREROUTING" not in transaction.text
        outputs, steps = lab.apply(after, steps)
        state = backend.parse(outputs)
        assert contents(state.entries) == contents(entries(backend, after)) and not state.facts["unrecognized"]
        assert _segments(outputs["ipv4"]) == segments

        # Back below the threshold: the hook chain holds the rules again and the segments go.
        outputs, dummy = lab.apply(_services(3), steps)
        assert _segments(outputs["ipv4"]) == []
        assert contents(backend.parse(outputs).entries) == contents(entries(backend, _services(3)))


@netns
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_change_from_the_run_record_leaves_segments_holding_the_recorded_entries_unwritten(variant, tmp_path):
    """A run that takes its run record keeps the recorded entry of each unchanged config item: a segment holding only
    those is neither written out nor compared, and the change is the one comparing every segment's lines gives."""
    backend = IptablesBackend(variant)
    lab = Netns(backend, tmp_path)
    with segments_from(10, spacing=4):
        dummy, steps = lab.apply(_services(60))
        recorded = entries(backend, _services(60))
        state = backend.recorded(None, RunRecord("ipv4=token ipv6=", recorded), deferred=True)
        changed = backend.entry(_services(60, port=9090)[33])
        desired = [changed if entry.name == "svc-33" else entry for entry in recorded]
        unchanged = iptables_lines.unchanged_segments(state.facts["ipv4"]["layout"], iptables_lines.chain_layout(desired))
        assert len(_segments(" ".join(iptables_lines.layout_chains(state.facts["ipv4"]["layout"])))) == len(unchanged) + 1
        [transaction] = backend.render(desired, state, "next")
        # The same rules as other entry objects: every segment compared by its lines.
        [compared] = backend.render(entries(backend, _services(60)[:33] + _services(60, port=9090)[33:34] + _services(60)[34:]), state, "next")
        assert transaction.text == compared.text
        assert len([line for line in transaction.text.splitlines() if line.startswith(":NODENET-PRE-")]) == 1
        outputs = lab.run(steps + [(transaction.apply_argv, transaction.text)])
        state = backend.parse(outputs)
    assert contents(state.entries) == contents(desired) and not state.facts["unrecognized"]


@netns
@pytest.mark.parametrize("variant", VARIANTS)
def test_in_a_segment_only_the_first_line_of_a_rule_carries_its_comment(variant, tmp_path):
    """x_tables keeps 256 bytes of comment in every line: a segment names each rule once, and reads back the same."""
    backend = IptablesBackend(variant)
    lab = Netns(backend, tmp_path)
    two = [Endpoint(addr("10.244.1.1"), 80), Endpoint(addr("10.244.1.2"), 80)]
    rules = [rule._replace(to_destination=tuple(two), source=(net("198.51.100.0/25"), net("198.51.100.128/25")))
             for rule in _services(12)]
    with segments_from(10, spacing=4):
        outputs, dummy = lab.apply(rules)
    segment_lines = [line for line in _rule_lines(outputs["ipv4"]) if line.startswith("-A NODENET-PRE-")]
    assert len(segment_lines) == 12 * 4
    assert sum("--comment" in line for line in segment_lines) == 12
    state = backend.parse(outputs)
    assert contents(state.entries) == contents(entries(backend, rules)) and not state.facts["unrecognized"]


@netns
@pytest.mark.parametrize("variant", VARIANTS)
def test_segments_an_earlier_version_wrote_with_a_comment_on_every_line_read_the_same(variant, tmp_path):
    backend = IptablesBackend(variant)
    lab = Netns(backend, tmp_path)
    two = (Endpoint(addr("10.244.1.1"), 80), Endpoint(addr("10.244.1.2"), 80))
    rules = [rule._replace(to_destination=two) for rule in _services(12)]
    with segments_from(10, spacing=4):
        layout = iptables_lines.hook_layout("prerouting", entries(backend, rules))
        script = (["*nat", ":NODENET-PREROUTING - [0:0]"] + [":%s - [0:0]" % segment for segment, part in layout]
                  + ["-A PREROUTING " + " ".join(iptables_lines.jump_tokens("prerouting"))]
                  + ["-A NODENET-PREROUTING -j %s" % segment for segment, part in layout]
                  + ["-A %s %s" % (segment, text) for segment, part in layout for entry in part for text in entry.compiled]
                  + ["COMMIT", ""])
        before = [(_restore_argv(variant), "\n".join(script))]
        state = backend.parse(lab.run(before))
        assert contents(state.entries) == contents(entries(backend, rules)) and not state.facts["unrecognized"]
        # A change refills the one segment it touches, in the form this version writes, and the rest reads on.
        after = rules[:5] + [rules[5]._replace(to_destination=tuple(reversed(two)))] + rules[6:]
        [transaction] = backend.render(entries(backend, after), state, "token")
        assert len([line for line in transaction.text.splitlines() if line.startswith(":NODENET-PRE-")]) == 1
        outputs, dummy = lab.apply(after, before)
        state = backend.parse(outputs)
        assert contents(state.entries) == contents(entries(backend, after)) and not state.facts["unrecognized"]


def test_counters_of_a_segment_line_without_a_comment_are_its_rules():
    listing = "\n".join(["*nat", ":NODENET-PREROUTING - [0:0]", ":NODENET-PRE-0123456789ab - [0:0]",
                         "[1:60] -A NODENET-PREROUTING -j NODENET-PRE-0123456789ab",
                         '[2:120] -A NODENET-PRE-0123456789ab -m comment --comment "svc" -m statistic --mode random '
                         '--probability 0.5 -j DNAT --to-destination 10.244.0.1:80',
                         "[3:180] -A NODENET-PRE-0123456789ab -j DNAT --to-destination 10.244.0.2:80",
                         "[5:300] -A NODENET-PREROUTING -j DNAT --to-destination 10.244.0.3:80", "COMMIT", ""])
    assert rule_counters(owned_objects(listing)) == {"svc": [5, 300]}


def test_segments_keep_their_bounds_when_rules_elsewhere_come_and_go():
    backend = IptablesBackend("nft")
    with segments_from(10, spacing=4):
        layout = iptables_lines.hook_layout("prerouting", entries(backend, _services(200)))
        fewer = iptables_lines.hook_layout("prerouting", entries(backend, _services(200)[:50] + _services(200)[51:]))
    assert all(segment is not None and len(part) <= iptables_lines.SEGMENT_MAX for segment, part in layout)
    changed = set(segment for segment, part in layout) ^ set(segment for segment, part in fewer)
    # Only the segment that held svc-50 changes (and its name, when svc-50 was its first rule).
    assert len(changed) <= 2


@netns
@pytest.mark.parametrize("variant", VARIANTS)
def test_counters_per_rule_from_a_listing_with_counters(variant, tmp_path):
    """A connection from the namespace itself walks the output chain: its rule counts the packet."""
    backend = IptablesBackend(variant)
    rule = make_rule(name="to-local-service", type="dnat", chain="output", family="ipv4", destination=(net("127.0.0.2/32"),),
                     protocol="tcp", destination_ports=(PortRange(80, 80),), to_destination=(Endpoint(addr("127.0.0.3"), 8080),))
    [transaction] = render(backend, [rule])
    script = tmp_path / "rules"
    script.write_text(transaction.text)
    connect = "import socket; s = socket.socket(); s.settimeout(1)\ntry: s.connect(('127.0.0.2', 80))\nexcept OSError: pass"
    commands = ["ip link set lo up", "%s < %s" % (" ".join(transaction.apply_argv), script), "python3 -c %s" % shlex.quote(connect),
                " ".join(backend.list_argv("ipv4", counters=True)), "echo @@ipv6", " ".join(backend.list_argv("ipv6", counters=True))]
    result = subprocess.run(["unshare", "--net", "--", "sh", "-ec", "\n".join(commands)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert result.returncode == 0, result.stderr
    ipv4, ipv6 = result.stdout.split("@@ipv6\n")

    def run_command(argv, data=None):
        return 0, ipv6 if argv[0].startswith("ip6") else ipv4, ""

    state = backend.read(run_command, counters=True)
    assert state.facts["counters"]["to-local-service"][0] >= 1
    assert contents(state.entries) == contents(entries(backend, [rule]))


@netns
def test_the_last_owned_rule_takes_the_nat_table_iptables_nft_made_with_it(tmp_path):
    """iptables-nft leaves an empty ``table ip nat`` behind; removing every owned object leaves the host as it was."""
    backend = IptablesBackend("nft", nft=shutil.which("nft"))
    lab = Netns(backend, tmp_path)
    dummy, steps = lab.apply(RECORDED_V4 + RECORDED_V6)
    dummy, steps = lab.apply([], steps)
    assert [text for argv, text in steps[-4:]] == ["delete table ip nat\n"] * 2 + ["delete table ip6 nat\n"] * 2
    commands = []
    for index, (argv, text) in enumerate(steps):
        path = tmp_path / ("replay%d" % index)
        path.write_text(text)
        commands.append("%s < %s" % (" ".join(shlex.quote(arg) for arg in argv), shlex.quote(str(path))))
    listing = subprocess.run(["unshare", "--net", "--", "sh", "-ec", "\n".join(commands + ["nft list tables"])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == ""


@netns
def test_a_nat_table_with_foreign_rules_stays(tmp_path):
    backend = IptablesBackend("nft", nft=shutil.which("nft"))
    lab = Netns(backend, tmp_path)
    foreign = [(_restore_argv("nft"), "*nat\n:DOCKER - [0:0]\n%s\nCOMMIT\n" % "\n".join(FOREIGN_V4))]
    outputs, steps = lab.apply(RECORDED_V4, foreign)
    outputs, steps = lab.apply([], steps)
    assert _rule_lines(outputs["ipv4"]) == FOREIGN_V4


@netns
def test_segments_laid_out_otherwise_than_this_version_would_are_rewritten_whole(tmp_path):
    """Segments the host holds but this layout would not make (another version wrote them) are not edited in place."""
    backend = IptablesBackend("nft")
    lab = Netns(backend, tmp_path)
    with segments_from(10, spacing=4):
        outputs, steps = lab.apply(_services(40))
    with segments_from(10, spacing=5):
        state = backend.parse(outputs)
        assert not state.facts["unrecognized"]
        after = _services(39)
        [transaction] = backend.render(entries(backend, after), state, "token")
        assert ":NODENET-PREROUTING - [0:0]" in transaction.text      # the full rewrite
        outputs, dummy = lab.apply(after, steps)
        state = backend.parse(outputs)
        assert contents(state.entries) == contents(entries(backend, after)) and not state.facts["unrecognized"]
        assert set(_segments(outputs["ipv4"])) == set(segment for segment, part in iptables_lines.hook_layout(
            "prerouting", entries(backend, after)))
