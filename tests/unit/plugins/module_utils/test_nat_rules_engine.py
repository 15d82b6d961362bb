# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nat_rules engine: desired ruleset per state and the check / apply / read-back flow."""
from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import shutil
import tempfile
import threading

import pytest

from ansible_collections.nodenet.nat.plugins.module_utils.backends.base import (
    BackendError, HostState, NatBackend, Transaction, content, entry_params, entry_rule,
)
from ansible_collections.nodenet.nat.plugins.module_utils.backends.detect import select_backend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.iptables import IptablesBackend
from ansible_collections.nodenet.nat.plugins.module_utils.backends.nft import NftBackend
from ansible_collections.nodenet.nat.plugins.module_utils.model import FAMILIES, RuleError
from ansible_collections.nodenet.nat.plugins.module_utils.model.dicts import rule_to_params
from ansible_collections.nodenet.nat.plugins.module_utils.model.params import rule_from_params, rules_from_config
from ansible_collections.nodenet.nat.plugins.module_utils.nat_rules import (
    NatRulesError, NatRulesRun, canonical_order, config_entries, config_items, given_config, listed_commands, desired_entries, merge_params,
    offline_backend, run_nat_rules, running_config_family,
)
from ansible_collections.nodenet.nat.plugins.module_utils.run_record import RecordStore
from support import FakeHost

EGRESS = dict(name="egress", type="masquerade", source=["10.244.0.0/16"], random_fully=True)
EXEMPT = dict(name="exempt", type="return", source=["10.244.0.0/16"], destination=["10.244.0.0/16"])
WEB = dict(name="web", type="dnat", protocol="tcp", destination_ports=[30080], to_destination=["10.244.1.10:80", "10.244.2.11:80"])
EGRESS6 = dict(name="egress6", type="masquerade", source=["fd00:10:244::/56"])


def _rules(*configs):
    return rules_from_config(configs)


def _names(rules):
    return [rule.name for rule in rules]


# -- desired ruleset per state ------------------------------------------------------------------

class FakeBackend(NatBackend):
    """Compiles a rule to its params; stores rules as JSON per family on a FakeNode; validation fails
    for a rule named in ``refuse``."""

    name = "fake"

    def __init__(self, refuse=()):
        self.refuse = refuse

    def compile(self, rule):
        return json.dumps(rule_to_params(rule), sort_keys=True)

    def read(self, run_command, counters=False):
        entries = []
        for family in FAMILIES:
            rc, out, err = run_command(["fake-list", family])
            if rc != 0:
                raise BackendError("reading the %s ruleset failed (rc=%s) running fake-list %s: %s" % (family, rc, family, err.strip()))
            entries += [self.entry(rule_from_params(params, 0)) for params in json.loads(out or "[]")]
        return HostState(entries, {"stamp": None})

    def recorded(self, run_command, record, deferred=False):
        return None

    def render(self, desired, current, token):
        transactions = []
        for family in FAMILIES:
            family_rules = [entry_params(entry) for entry in desired if entry.family == family]
            if family_rules or any(entry.family == family for entry in current.entries):
                check = ["fake-check", "refuse"] if any(rule["name"] in self.refuse for rule in family_rules) else ["fake-check"]
                transactions.append(Transaction((family,), json.dumps(family_rules) + "\n", check, ["fake-apply", family]))
        return transactions

    def applied_stamp(self, current, desired, transactions, token):
        return token


BACKEND = FakeBackend()


def _desired(state, current, config):
    """desired_entries on rules: the rules ``state`` asks for."""
    entries = desired_entries(BACKEND, state, [BACKEND.entry(rule) for rule in current], config)
    return [entry_rule(entry) for entry in entries]


def test_merged_keeps_positions_replaces_by_name_and_appends_new_rules():
    current = _rules(EXEMPT, EGRESS)
    desired = _desired("merged", current, [dict(name="late", type="masquerade"), dict(name="exempt", destination=["10.96.0.0/12"])])
    assert _names(desired) == ["exempt", "egress", "late"]
    assert [str(network) for network in desired[0].destination] == ["10.96.0.0/12"]
    assert desired[0].source == current[0].source


def test_merged_combines_fields_with_the_existing_rule():
    merged = _desired("merged", _rules(EGRESS), [dict(name="egress", out_interface="eth0")])
    assert merged == _rules(dict(EGRESS, out_interface="eth0"))


def test_merged_with_another_type_replaces_the_whole_rule():
    snat = dict(name="egress", type="snat", to_source="192.0.2.1")
    assert _desired("merged", _rules(EGRESS), [snat]) == _rules(snat)


def test_merged_address_change_re_infers_the_family():
    existing = _rules(dict(name="any", type="masquerade", family="ipv6"))
    assert _desired("merged", existing, [dict(name="any", source=["10.0.0.0/8"])])[0].family == "ipv4"
    assert _desired("merged", existing, [dict(name="any", random_fully=True)])[0].family == "ipv6"


def test_merged_new_rule_needs_a_type():
    with pytest.raises(Exception, match=r"config\[0\] \(name=new\): type: is required"):
        _desired("merged", _rules(EGRESS), [dict(name="new", source=["10.0.0.0/8"])])


def test_merge_params_replaces_lists_rather_than_extending_them():
    merged = merge_params(rule_to_params(_rules(EGRESS)[0]), dict(name="egress", source=["10.0.0.0/8"], random_fully=None))
    assert merged["source"] == ["10.0.0.0/8"] and merged["random_fully"] is True


def test_replaced_overwrites_the_whole_rule_in_place():
    desired = _desired("replaced", _rules(EGRESS, EXEMPT), [dict(name="egress", type="masquerade", out_interface="eth0")])
    assert desired == _rules(dict(name="egress", type="masquerade", out_interface="eth0"), EXEMPT)


def test_overridden_is_exactly_the_config_in_canonical_order():
    desired = _desired("overridden", _rules(EGRESS, EXEMPT), [EGRESS6, EXEMPT, WEB])
    assert _names(desired) == ["web", "exempt", "egress6"]


def test_canonical_order_keeps_the_order_within_a_chain():
    rules = _rules(EGRESS6, EGRESS, WEB, EXEMPT)
    assert _names(canonical_order(rules)) == ["web", "egress", "exempt", "egress6"]


def test_deleted_removes_named_rules_and_ignores_unknown_names():
    assert _names(_desired("deleted", _rules(EXEMPT, EGRESS, WEB), [dict(name="egress"), dict(name="gone")])) == ["exempt", "web"]


def test_deleted_without_config_removes_every_owned_rule():
    assert _desired("deleted", _rules(EXEMPT, EGRESS), []) == []


def test_duplicate_names_fail_in_every_action_state():
    for state in ("merged", "replaced", "overridden", "deleted"):
        with pytest.raises(Exception, match=r"config\[1\] \(name=egress\): name: 'egress' is already used by config\[0\]"):
            _desired(state, [], [EGRESS, EGRESS])


def test_a_config_item_equal_to_the_one_an_entry_came_from_is_that_entry():
    known = config_entries(BACKEND, [EGRESS, WEB], {})
    again = config_entries(BACKEND, [dict(EGRESS), dict(WEB, protocol="udp")], dict((entry.name, entry) for entry in known))
    assert again[0] is known[0]
    assert again[1] is not known[1] and entry_rule(again[1]).protocol == "udp"
    # An entry read from the host (no config item) is compiled again from the item.
    read_back = BACKEND.entry(entry_rule(known[0]))
    assert config_entries(BACKEND, [EGRESS], {"egress": read_back})[0] is not read_back


# -- the flow, with a fake backend and a fake host ----------------------------------------------

class FakeNode(object):
    """The runner: answers fake-list from its state, fake-apply changes it; records every call."""

    def __init__(self, *configs):
        self.state = dict((family, "[]") for family in FAMILIES)
        for rule in _rules(*configs):
            self.state[rule.family] = json.dumps(json.loads(self.state[rule.family]) + [rule_to_params(rule)])
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append(argv[0])
        if argv[0] == "fake-list":
            return 0, self.state[argv[1]], ""
        if argv == ["fake-check", "refuse"]:
            return 1, "", "line 1: no such thing\n"
        if argv[0] == "fake-apply":
            self.state[argv[1]] = data.strip()
        return 0, "", ""


@pytest.fixture
def store(tmp_path):
    return RecordStore(str(tmp_path / "run"))


def _params(state, config=None, **params):
    return dict(dict(state=state, config=config, backend="auto", scope=None, running_config=None, persist=False, persist_path=None,
                     result_rules="all"), **params)


def _run(node, state, config=None, check_mode=False, diff=False, backend=None, store=None, **params):
    backend = backend or FakeBackend()
    result = NatRulesRun(_params(state, config, **params), FakeHost(node, check_mode=check_mode, diff=diff),
                         lambda requested: (backend, "fake reason"), lambda name: backend, store or RecordStore(tempfile.mkdtemp())).run()
    del result["invocation"]
    return result


def test_apply_then_second_run_is_unchanged():
    host = FakeNode(EGRESS)
    result = _run(host, "merged", [WEB, EGRESS6])
    assert result["changed"] is True
    # Two transactions (one per family): both validate before either applies; nothing is read back.
    assert host.calls == ["fake-list", "fake-list", "fake-check", "fake-check", "fake-apply", "fake-apply"]
    assert _names(_rules(*result["after"])) == ["web", "egress", "egress6"]
    assert result["before"] == [rule_to_params(rule) for rule in _rules(EGRESS)]
    assert result["summary"] == dict(before=1, after=3, added=["web", "egress6"], removed=[], changed=[], families=["ipv4", "ipv6"])
    assert len(result["commands"]) == sum(transaction["lines"] for transaction in result["transactions"])
    assert result["backend"] == "fake" and result["backend_reason"] == "fake reason"

    host.calls = []
    again = _run(host, "merged", [WEB, EGRESS6])
    assert again["changed"] is False and again["commands"] == [] and again["after"] == result["after"]
    assert host.calls == ["fake-list", "fake-list"]


def test_one_transaction_applies_without_a_separate_validation():
    host = FakeNode()
    assert _run(host, "merged", [EGRESS])["changed"] is True
    assert host.calls == ["fake-list", "fake-list", "fake-apply"]


def test_result_lists_rules_as_result_rules_asks():
    host = FakeNode(EGRESS, EXEMPT, WEB)
    summary = _run(host, "merged", [dict(name="web", destination_ports=[30081])], result_rules="summary", diff=True)
    assert summary["summary"] == dict(before=3, after=3, added=[], removed=[], changed=["web"], families=["ipv4"])
    assert "before" not in summary and "after" not in summary
    assert [rule["destination_ports"] for rule in summary["diff"]["after"]["rules"]] == [[30081]]
    result = _run(host, "merged", [dict(name="web", destination_ports=[30082])], result_rules="changed", diff=True)
    assert [rule["name"] for rule in result["before"]] == ["web"] and [rule["name"] for rule in result["after"]] == ["web"]
    assert result["after"][0]["destination_ports"] == [30082]
    assert result["diff"] == dict(before=dict(rules=result["before"]), after=dict(rules=result["after"]))
    unchanged = _run(host, "merged", [dict(name="web", destination_ports=[30082])], result_rules="changed")
    assert (unchanged["before"], unchanged["after"]) == ([], [])
    everything = _run(host, "merged", [dict(name="web", destination_ports=[30082])], result_rules="all")
    assert len(everything["before"]) == len(everything["after"]) == 3


def test_more_than_a_thousand_names_are_counted_not_listed_unless_the_rules_are_asked_for():
    egress = [dict(EGRESS, name="egress-%d" % index) for index in range(1001)]
    first = _run(FakeNode(), "overridden", egress, result_rules="summary")
    assert first["summary"] == dict(before=0, after=1001, added=[], removed=[], changed=[], omitted=dict(added=1001, removed=0, changed=0),
                                    families=["ipv4"])
    listed = _run(FakeNode(), "overridden", egress, result_rules="changed")
    assert listed["summary"]["added"] == [rule["name"] for rule in egress] and "omitted" not in listed["summary"]
    # A thousand names in all are listed.
    host = FakeNode(*egress)
    changed = [dict(rule, random_fully=False) for rule in egress[:500]]
    moved = _run(host, "merged", changed + [dict(EGRESS, name="other-%d" % index) for index in range(500)], result_rules="summary")
    assert len(moved["summary"]["changed"]) == 500 and len(moved["summary"]["added"]) == 500 and moved["summary"]["removed"] == []
    assert "omitted" not in moved["summary"]
    emptied = _run(host, "overridden", [], result_rules="summary")
    assert emptied["summary"]["omitted"] == dict(added=0, removed=1501, changed=0) and emptied["summary"]["removed"] == []


def test_check_mode_runs_only_checks_and_predicts_after():
    host = FakeNode(EGRESS)
    before_state = dict(host.state)
    result = _run(host, "overridden", [WEB], check_mode=True, diff=True)
    assert result["changed"] is True
    assert "fake-apply" not in host.calls and "fake-check" in host.calls
    assert host.state == before_state
    assert result["after"] == [rule_to_params(rule) for rule in _rules(WEB)]
    assert result["diff"] == dict(before=dict(rules=result["before"]), after=dict(rules=result["after"]))
    assert result["commands"]


def test_failed_check_applies_nothing_in_any_family():
    host = FakeNode()
    with pytest.raises(NatRulesError) as caught:
        _run(host, "merged", [EGRESS, EGRESS6], backend=FakeBackend(refuse=("egress6",)))
    assert "validation of the ipv6 ruleset failed (rc=1) running fake-check refuse: line 1: no such thing" in str(caught.value)
    assert "fake-apply" not in host.calls
    assert caught.value.result["commands"]


def test_invalid_input_fails_before_any_command_changes_the_host():
    host = FakeNode(EGRESS)
    with pytest.raises(NatRulesError, match=r"config\[1\] \(name=bad\): destination: '10.0.0.300/24' is not a valid network"):
        _run(host, "overridden", [WEB, dict(name="bad", type="masquerade", destination=["10.0.0.300/24"])])
    assert set(host.calls) == {"fake-list"}


def test_gathered_reads_only():
    host = FakeNode(EGRESS, EGRESS6)
    result = _run(host, "gathered")
    assert result == dict(changed=False, backend="fake", backend_reason="fake reason",
                          gathered=[rule_to_params(rule) for rule in _rules(EGRESS, EGRESS6)])
    assert set(host.calls) == {"fake-list"}


def test_deleted_everything_leaves_nothing_owned():
    host = FakeNode(EGRESS, EGRESS6)
    result = _run(host, "deleted")
    assert result["changed"] is True and result["after"] == []
    assert host.state == {"ipv4": "[]", "ipv6": "[]"}


def test_drift_is_reported_and_rewritten_although_rules_are_equal():
    class DriftingBackend(FakeBackend):
        def read(self, run_command, counters=False):
            state = super(DriftingBackend, self).read(run_command)
            return state._replace(facts={"unrecognized": ["ipv4 NODENET-POSTROUTING: hand edit"]})

    host = FakeNode(EGRESS)
    result = _run(host, "merged", [EGRESS], backend=DriftingBackend())
    assert result["changed"] is True and result["drift"] == ["ipv4 NODENET-POSTROUTING: hand edit"]
    assert "fake-apply" in host.calls


def test_failing_list_command_names_the_command():
    def broken(argv, data=None):
        return 4, "", "Permission denied (you must be root)\n"

    with pytest.raises(NatRulesError, match=r"reading the ipv4 ruleset failed \(rc=4\) running fake-list ipv4: Permission denied"):
        _run(broken, "gathered")


def test_no_nft_table_reads_as_nothing_owned():
    def no_tables(argv, data=None):
        assert argv == ["nft", "-j", "list", "chains"]
        return 0, '{"nftables": [{"metainfo": {"version": "1.0.6"}}]}', ""

    assert NftBackend().read(no_tables).entries == []


def test_persist_writes_the_fresh_host_script_once(tmp_path):
    host = FakeNode()
    path = str(tmp_path / "etc" / "nat.rules")
    result = _run(host, "merged", [EGRESS, EGRESS6], persist=True, persist_path=path)
    assert result["persisted"] == [path, path + "6"]
    saved = (tmp_path / "etc" / "nat.rules").read_text()
    assert saved.startswith("# Managed by nodenet.nat") and '"egress"' in saved and '"egress6"' not in saved
    assert '"egress6"' in (tmp_path / "etc" / "nat.rules6").read_text()

    again = _run(host, "merged", [EGRESS, EGRESS6], persist=True, persist_path=path)
    assert again["changed"] is False and again["persisted"] == []


def test_persist_in_check_mode_writes_nothing(tmp_path):
    path = str(tmp_path / "nat.rules")
    result = _run(FakeNode(EGRESS), "merged", [EGRESS], check_mode=True, persist=True, persist_path=path)
    assert result["changed"] is True and result["persisted"] == [path, path + "6"]
    assert list(tmp_path.iterdir()) == []


def test_runs_take_turns_on_the_host_lock(tmp_path):
    directory = str(tmp_path / "run")
    with RecordStore(directory):
        with pytest.raises(NatRulesError, match="another nat_rules run held .*/lock for 0 s"):
            _run(FakeNode(), "merged", [EGRESS], store=RecordStore(directory, lock_timeout=0))
    assert _run(FakeNode(), "merged", [EGRESS], store=RecordStore(directory, lock_timeout=0))["changed"] is True


# -- offline states ---------------------------------------------------------------------------


def _fail_on_call(argv, data=None):
    raise AssertionError("offline state ran %s" % argv)


def _offline(state, backend, **params):
    params = dict(dict(state=state, config=None, backend=backend, running_config=None, persist=False, persist_path=None), **params)
    result = NatRulesRun(params, FakeHost(_fail_on_call), _fail_on_call, offline_backend, None).run()
    del result["invocation"]
    return result


def test_rendered_needs_an_explicit_backend():
    with pytest.raises(NatRulesError, match="backend: state rendered works offline and needs an explicit backend"):
        _offline("rendered", "auto", config=[EGRESS])


def test_rendered_is_the_fresh_host_script():
    result = _offline("rendered", "nft", config=[EGRESS, WEB])
    backend = NftBackend()
    transactions = backend.render(backend.normalize(canonical_order([backend.entry(rule) for rule in _rules(EGRESS, WEB)])),
                                  HostState([], {}), None)
    assert result["rendered"] == [line for transaction in transactions for line in transaction.text.splitlines()]
    assert result["backend"] == "nft" and result["changed"] is False


def test_a_rule_the_backend_cannot_write_fails_cleanly():
    # Valid for the model, but nft cannot match conntrack states and NAT status in one rule.
    mixed = dict(name="mixed", type="masquerade", ct_state=["new", "dnat"])
    with pytest.raises(NatRulesError, match=r"rule mixed: ct_state: \['dnat', 'new'\] mixes conntrack states"):
        _offline("rendered", "nft", config=[mixed])


IP6TABLES_SAVE_EGRESS6 = "\n".join([
    "# Generated by ip6tables-save v1.8.9 (nf_tables) on Mon Jan  1 00:00:00 2024",
    "*nat",
    ":PREROUTING ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    ":NODENET-POSTROUTING - [0:0]",
    "-A POSTROUTING -m comment --comment nodenet-nat -j NODENET-POSTROUTING",
    "-A NODENET-POSTROUTING -s fd00:10:244::/56 -m comment --comment egress6 -j MASQUERADE",
    "COMMIT",
]) + "\n"


@pytest.mark.parametrize("backend", ["iptables", "iptables-legacy"])
def test_parsed_reads_ip6tables_save_output_as_ipv6(backend):
    result = _offline("parsed", backend, running_config=IP6TABLES_SAVE_EGRESS6)
    assert result["parsed"] == [rule_to_params(rule) for rule in _rules(EGRESS6)]
    assert result["backend"] == backend


def test_parsed_round_trips_a_rendered_iptables_ruleset():
    rules = _rules(EXEMPT, EGRESS)
    backend = offline_backend("iptables")
    script = backend.render([backend.entry(rule) for rule in rules], HostState([], {}), None)[0].text
    saved = script.replace("-I POSTROUTING 1 ", "-A POSTROUTING ")
    assert _offline("parsed", "iptables", running_config=saved)["parsed"] == [rule_to_params(rule) for rule in rules]


def test_parsed_reports_owned_lines_it_cannot_read():
    # Without the ip6tables-save header the listing reads as IPv4, where the IPv6 rule has no place.
    headless = IP6TABLES_SAVE_EGRESS6.split("\n", 1)[1]
    result = _offline("parsed", "iptables", running_config=headless)
    assert result["parsed"] == []
    assert any("cannot read" in line and "fd00:10:244::/56" in line and "another family than ipv4" in line
               for line in result["drift"])


@pytest.mark.parametrize("text, family", [
    ("# Generated by iptables-save v1.8.9\n*nat\nCOMMIT\n", "ipv4"),
    ("# Generated by ip6tables-save v1.8.9\n*nat\nCOMMIT\n", "ipv6"),
    ("# Generated by ip6tables-nft-save v1.8.9 (nf_tables) on Mon Nov 23 12:26:11 2026\n*nat\nCOMMIT\n", "ipv6"),
    ("# Generated by ip6tables-legacy-save v1.8.9\n*nat\nCOMMIT\n", "ipv6"),
    ("# Generated by iptables-nft-save v1.8.9 (nf_tables)\n*nat\nCOMMIT\n", "ipv4"),
    ('{"nftables": [{"metainfo": {}}, {"table": {"family": "ip6", "name": "nodenet_nat", "handle": 3}}]}', "ipv6"),
    ('{"nftables": [{"table": {"family": "ip", "name": "nodenet_nat", "handle": 3}}]}', "ipv4"),
])
def test_running_config_family(text, family):
    assert running_config_family(text) == family


def test_no_installed_backend_fails_with_a_message():
    with pytest.raises(NatRulesError, match="backend: nft was requested but the nft binary is not installed"):
        run_nat_rules(dict(state="gathered", config=None, backend="nft", running_config=None, persist=False, persist_path=None),
                      FakeHost(_fail_on_call, which=lambda name: None), store=RecordStore(tempfile.mkdtemp()))


# -- the real backends, in a throwaway network namespace ---------------------------------------

_REAL_BACKEND_BINARIES = {"nft": ["nft"], "iptables": ["iptables-nft-restore", "ip6tables-nft-restore"],
                          "iptables-legacy": ["iptables-legacy-restore", "ip6tables-legacy-restore"]}


@pytest.fixture
def namespace_runner(netns):
    """A runner whose commands run in a new network namespace, gone when the test ends."""
    return netns.run


def _real_backend(name):
    """The backend as detection gives it: iptables-nft with the nft binary (its marker chains), when there is one."""
    if name == "iptables":
        return IptablesBackend("nft", nft=shutil.which("nft"))
    return offline_backend(name)


@pytest.mark.parametrize("backend_name", sorted(_REAL_BACKEND_BINARIES))
def test_real_backend_converges_idempotently_in_a_namespace(namespace_runner, backend_name, store):
    if not all(shutil.which(binary) for binary in _REAL_BACKEND_BINARIES[backend_name]):
        pytest.skip("%s tools are not installed" % backend_name)
    mark = dict(name="mark-external", type="mark", in_interface="eth0", set_mark="0x4000/0x4000")
    steps = [
        ("merged", [EXEMPT, EGRESS, WEB, mark, EGRESS6], True),
        ("merged", [EXEMPT, EGRESS, WEB, mark, EGRESS6], False),
        ("merged", [dict(name="web", to_destination=["10.244.1.10:80", "10.244.2.11:80", "10.244.3.12:80"])], True),
        ("overridden", [EGRESS, EGRESS6], True),
        ("overridden", [EGRESS6, EGRESS], False),
        ("deleted", [dict(name="egress6")], True),
        ("deleted", [], True),
        ("deleted", [], False),
    ]
    backend = _real_backend(backend_name)
    for state, config, changed in steps:
        params = _params(state, config, backend=backend_name)
        check = NatRulesRun(params, FakeHost(namespace_runner, check_mode=True), lambda requested: (backend, "test"), offline_backend, store).run()
        result = NatRulesRun(params, FakeHost(namespace_runner), lambda requested: (backend, "test"), offline_backend, store).run()
        assert (check["changed"], result["changed"]) == (changed, changed), (state, config, result)
        assert "drift" not in result, result
        assert check["after"] == result["after"], (state, config)
        # What the run recorded is what a full read of the host finds.
        assert [content(entry) for entry in backend.read(namespace_runner).entries] == \
            [content(entry) for entry in backend.read(namespace_runner, store.load(backend.name)).entries]
    assert backend.read(namespace_runner).entries == []


def test_a_hand_edit_behind_the_record_is_repaired_by_a_full_read(namespace_runner, store):
    """An element deleted by hand leaves the marker in place; the next change cannot apply as recorded
    (it deletes that element again), so the run reads the host in full and applies what is left to do."""
    backend = NftBackend()
    services = [dict(name="svc-%d" % index, type="dnat", destination_type="local", protocol="tcp", destination_ports=[30000 + index],
                     to_destination=["10.244.1.%d:80" % index]) for index in range(1, 4)]

    def converge(config):
        return NatRulesRun(_params("overridden", config, backend="nft"), FakeHost(namespace_runner), lambda requested: (backend, "test"),
                           offline_backend, store).run()

    converge(services)
    rc, dummy, err = namespace_runner(["nft", "delete", "element", "ip", "nodenet_nat", "prerouting_local_1", "{ tcp . 30002 }"])
    assert rc == 0, err
    result = converge(services[:1])
    assert result["changed"] is True
    assert [rule["name"] for rule in result["before"]] == ["svc-1", "svc-3"]
    assert not any("30002" in line for line in result["commands"])
    assert [entry_params(entry)["name"] for entry in backend.read(namespace_runner).entries] == ["svc-1"]


def _services(count, port=80):
    return [dict(name="svc-%d" % index, type="dnat", destination_type="local", protocol="tcp", destination_ports=[30000 + index],
                 to_destination=["10.244.1.%d:%d" % (index, port)]) for index in range(1, count + 1)]


# (backend, the command a run from the record runs besides the restore, the plain tool): iptables-nft lists its
# chains with nft, or without the nft binary looks its marker up as legacy does.
_RECORD_RUNS = {
    "iptables": (lambda: _real_backend("iptables"), "nft", "iptables-nft"),
    "iptables-without-nft": (lambda: IptablesBackend("nft"), "iptables-nft", "iptables-nft"),
    "iptables-legacy": (lambda: _real_backend("iptables-legacy"), "iptables-legacy", "iptables-legacy"),
}


def _record_run_backend(case):
    make, check, tool = _RECORD_RUNS[case]
    tools = [check, tool, tool + "-save"]
    if not all(shutil.which(name) for name in tools):
        pytest.skip("needs %s" % ", ".join(tools))
    return make(), check, tool


@pytest.mark.parametrize("case", sorted(_RECORD_RUNS))
def test_iptables_runs_from_the_record_list_no_rule(netns, store, case):
    """A no-op and a one-rule change never list the owned rules (iptables-save): the marker chain says the
    host holds what the record holds, nothing is read after the change, and the end state is what a full read finds."""
    backend, check, tool = _record_run_backend(case)
    commands = []

    def runner(argv, data=None):
        commands.append(os.path.basename(argv[0]))
        return netns.run(argv, data)

    def converge(config):
        del commands[:]
        return NatRulesRun(_params("overridden", config, backend=backend.name), FakeHost(runner), lambda requested: (backend, "test"),
                           offline_backend, store).run()

    first = converge(_services(3))
    assert first["changed"] and any(line.startswith(":NODENET-RUN-") for line in first["commands"])
    assert not converge(_services(3))["changed"] and commands == [check]
    changed = converge(_services(2) + _services(3, port=81)[2:])
    # A marker lookup is left to the change, which deletes the recorded marker; nft's listing names the chains.
    assert changed["summary"]["changed"] == ["svc-3"] and commands == ([check] if backend.nft else []) + [tool + "-restore"]
    assert [content(entry) for entry in backend.read(netns.run).entries] == [content(entry) for entry in store.load(backend.name).entries]
    assert not converge(_services(2) + _services(3, port=81)[2:])["changed"] and commands == [check]
    removed = converge([])
    assert removed["changed"] and backend.read(netns.run).entries == []
    if backend.nft:
        # Removing the last rules needs to know whether other tools use the nat table: a full read, and the table goes.
        assert tool + "-save" in commands
        rc, tables, err = netns.run(["nft", "list", "tables"])
        assert (rc, tables) == (0, "")
    else:
        assert commands == [tool + "-restore"]


@pytest.mark.parametrize("case", sorted(_RECORD_RUNS))
@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("change", ["one rule", "a new hook"])
def test_iptables_host_that_lost_its_rules_behind_the_record_is_read_and_converged(netns, store, case, check_mode, change):
    """A host that lost the owned chains (a reboot, a flush by hand) does not carry the recorded marker. A change
    (a rule edited in place, or a new hook's chain, which rewrites the family) deletes the recorded marker and
    so fails as one transaction; the run then reads the host in full and converges. Check mode looks it up first."""
    backend, dummy, tool = _record_run_backend(case)
    services = _services(3)
    wanted = services[:2] + _services(3, port=81)[2:] if change == "one rule" else services + [EGRESS]

    commands = []

    def runner(argv, data=None):
        outcome = netns.run(argv, data)
        commands.append((os.path.basename(argv[0]), outcome[0]))
        return outcome

    def converge(config, check=False):
        del commands[:]
        return NatRulesRun(_params("overridden", config, backend=backend.name), FakeHost(runner, check_mode=check),
                           lambda requested: (backend, "test"), offline_backend, store).run()

    converge(services)
    for argv in (["-F", "PREROUTING"], ["-F"], ["-X"]):
        rc, dummy, err = netns.run([tool, "-w", "-t", "nat"] + argv)
        assert rc == 0, err
    result = converge(wanted, check_mode)
    assert result["changed"] is True and result["summary"]["before"] == 0
    if not backend.nft and not check_mode:
        # The change from the record failed as a whole, then the full read.
        assert commands[:2] == [(tool + "-restore", 1), (tool + "-save", 0)]
    if check_mode:
        assert backend.read(netns.run).entries == []
        converge(wanted)
    found = dict((entry.name, entry_params(entry)) for entry in backend.read(netns.run).entries)
    assert found == dict((params["name"], rule_to_params(rule_from_params(params, 0))) for params in wanted)
    assert not converge(wanted)["changed"]


@pytest.mark.parametrize("case", sorted(_RECORD_RUNS))
def test_iptables_family_a_change_leaves_alone_is_still_checked(netns, store, case):
    """A change proves the markers of the families it changes only: IPv6 rules flushed by hand behind the record
    are seen when only an IPv4 rule changes (its marker looked up), and the run reads in full and puts them back."""
    backend, dummy, tool = _record_run_backend(case)
    ip6tool = tool.replace("iptables", "ip6tables")

    def converge(config):
        return NatRulesRun(_params("overridden", config, backend=backend.name), FakeHost(netns.run), lambda requested: (backend, "test"),
                           offline_backend, store).run()

    converge(_services(2) + [EGRESS6])
    for argv in (["-F"], ["-X"]):
        rc, dummy, err = netns.run([ip6tool, "-w", "-t", "nat"] + argv)
        assert rc == 0, err
    result = converge(_services(1) + _services(2, port=81)[1:] + [EGRESS6])
    assert result["summary"]["changed"] == ["svc-2"] and result["summary"]["added"] == ["egress6"]
    assert sorted(entry.name for entry in backend.read(netns.run).entries) == ["egress6", "svc-1", "svc-2"]


@pytest.mark.parametrize("backend_name", sorted(_REAL_BACKEND_BINARIES))
def test_auto_keeps_the_backend_whose_run_record_the_host_carries_without_listing_rulesets(netns, store, backend_name):
    """auto detection lists every table of both iptables variants (seconds at tens of thousands of rules); a run
    record the host still carries says which backend holds the rules. A record without rules says nothing."""
    if not all(shutil.which(binary) for binary in _REAL_BACKEND_BINARIES[backend_name]):
        pytest.skip("needs %s" % ", ".join(_REAL_BACKEND_BINARIES[backend_name]))
    commands = []

    def runner(argv, data=None):
        commands.append(os.path.basename(argv[0]))
        return netns.run(argv, data)

    def converge(config, backend):
        del commands[:]
        return NatRulesRun(_params("overridden", config, backend=backend), FakeHost(runner, which=shutil.which),
                           lambda requested: select_backend(requested, runner, shutil.which), offline_backend, store).run()

    converge(_services(3), backend_name)
    for config in (_services(3), _services(2)):
        result = converge(config, "auto")
        assert (result["backend"], result["changed"]) == (backend_name, config != _services(3))
        assert "run record" in result["backend_reason"] and not [command for command in commands if command.endswith("-save")]
    converge([], backend_name)
    assert "run record" not in converge([], "auto")["backend_reason"]
    assert [command for command in commands if command.endswith("-save")]


def test_auto_selects_again_when_the_host_lost_the_rules_of_its_record(netns, store):
    """auto keeps iptables-legacy for its record and leaves the marker to the change; the host lost the rules (a
    flush by hand), so the change fails whole, the record is forgotten and detection chooses as on a new host."""
    binaries = _REAL_BACKEND_BINARIES["iptables-legacy"]
    if not all(shutil.which(binary) for binary in binaries):
        pytest.skip("needs %s" % ", ".join(binaries))
    commands = []

    def runner(argv, data=None):
        outcome = netns.run(argv, data)
        commands.append((os.path.basename(argv[0]), outcome[0]))
        return outcome

    def converge(config, backend):
        del commands[:]
        return NatRulesRun(_params("overridden", config, backend=backend), FakeHost(runner, which=shutil.which),
                           lambda requested: select_backend(requested, runner, shutil.which), offline_backend, store).run()

    converge(_services(3), "iptables-legacy")
    for argv in (["-F"], ["-X"]):
        rc, dummy, err = netns.run(["iptables-legacy", "-w", "-t", "nat"] + argv)
        assert rc == 0, err
    result = converge(_services(2), "auto")
    assert commands[0] == ("iptables-legacy-restore", 1) and "run record" not in result["backend_reason"]
    backend, dummy = select_backend(result["backend"], netns.run, shutil.which)
    assert sorted(entry.name for entry in backend.read(netns.run).entries) == ["svc-1", "svc-2"]
    again = converge(_services(2), "auto")
    assert not again["changed"] and again["backend"] == result["backend"] and "run record" in again["backend_reason"]
    if result["backend"] != "iptables-legacy":
        assert store.load("iptables-legacy") is None


@pytest.mark.parametrize("case", sorted(_RECORD_RUNS))
def test_iptables_line_deleted_by_hand_behind_the_record_is_repaired_by_a_full_read(netns, store, case):
    """The marker stays when a line is deleted by hand; the next change deletes lines by their text, so the line
    that is gone fails it instead of deleting another, and the run reads the host in full and applies again."""
    backend, dummy, tool = _record_run_backend(case)

    def converge(config):
        return NatRulesRun(_params("overridden", config, backend=backend.name), FakeHost(netns.run), lambda requested: (backend, "test"),
                           offline_backend, store).run()

    converge(_services(3))
    rc, dummy, err = netns.run([tool, "-w", "-t", "nat", "-D", "NODENET-PREROUTING", "2"])
    assert rc == 0, err
    result = converge(_services(1))
    assert result["changed"] is True
    assert [rule["name"] for rule in result["before"]] == ["svc-1", "svc-3"]
    assert [entry_params(entry)["name"] for entry in backend.read(netns.run).entries] == ["svc-1"]


# -- scope: several callers, each owning the rules named with its prefix -------------------------

TEAM_A = dict(name="a-egress", type="masquerade", source=["10.10.0.0/16"])
TEAM_B_MARK = dict(name="b-mark", type="mark", chain="postrouting", source=["10.20.0.0/16"], set_mark="0x2000/0x2000")
TEAM_B = dict(name="b-egress", type="masquerade", source=["10.20.0.0/16"], mark="0x2000/0x2000", mark_negate=True)


def test_scoped_overridden_keeps_other_rules_and_replaces_the_scope_in_place():
    host = FakeNode(TEAM_A, TEAM_B_MARK, TEAM_B, EGRESS)
    result = _run(host, "overridden", [dict(TEAM_B, name="b-egress-2")], scope="b-")
    assert _names(_rules(*result["before"])) == ["b-mark", "b-egress"]
    assert _names(_rules(*result["after"])) == ["b-egress-2"]
    assert _names(_rules(*_run(host, "gathered", scope="").get("gathered"))) == ["a-egress", "b-egress-2", "egress"]


def test_scopes_converge_to_a_stable_order_whatever_order_they_run_in():
    host = FakeNode()
    for scope, config in (("a-", [TEAM_A]), ("b-", [TEAM_B_MARK, TEAM_B]), ("a-", [TEAM_A]), ("b-", [TEAM_B_MARK, TEAM_B])):
        result = _run(host, "overridden", config, scope=scope)
    assert result["changed"] is False
    assert _names(_rules(*_run(host, "gathered").get("gathered"))) == ["a-egress", "b-mark", "b-egress"]


def test_scoped_deleted_without_config_removes_only_the_scope():
    host = FakeNode(TEAM_A, TEAM_B_MARK, TEAM_B)
    result = _run(host, "deleted", [], scope="b-")
    assert result["changed"] is True and result["after"] == []
    assert _names(_rules(*_run(host, "gathered").get("gathered"))) == ["a-egress"]


def test_scoped_gathered_lists_only_the_scope():
    host = FakeNode(TEAM_A, TEAM_B)
    assert _names(_rules(*_run(host, "gathered", scope="a-")["gathered"])) == ["a-egress"]


def test_a_rule_outside_the_scope_fails_before_anything_runs():
    host = FakeNode(TEAM_A)
    with pytest.raises(NatRulesError, match=r"config\[0\] \(name=a-egress\): name: 'a-egress' does not start with the scope 'b-'"):
        _run(host, "overridden", [TEAM_A], scope="b-")
    assert host.calls == []


def test_replacing_a_udp_endpoint_clears_the_flow_of_a_client_that_keeps_its_port(namespace_runner, store):
    """The client's next datagram (same source port) reaches the new endpoint only because its flow was deleted."""
    if not shutil.which("conntrack"):
        pytest.skip("conntrack is not installed")
    backend = NftBackend()
    dns = dict(name="dns", type="dnat", chain="output", destination=["127.0.0.2"], protocol="udp", destination_ports=[53],
               to_destination=["127.0.0.3:5353"])
    send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 40053)); s.sendto(b'q', ('127.0.0.2', 53))"

    def converge(config, check_mode=False):
        return NatRulesRun(_params("overridden", config, backend="nft"), FakeHost(namespace_runner, which=shutil.which, check_mode=check_mode),
                           lambda requested: (backend, "test"), offline_backend, store).run()

    def flows_to(address):
        return [line for line in namespace_runner(["conntrack", "-L", "-p", "udp"])[1].splitlines() if "src=%s " % address in line]

    assert namespace_runner(["ip", "link", "set", "lo", "up"])[0] == 0
    converge([dns])
    assert namespace_runner(["python3", "-c", send])[0] == 0
    assert len(flows_to("127.0.0.3")) == 1
    moved = dict(dns, to_destination=["127.0.0.4:5353"])
    predicted = converge([moved], check_mode=True)
    assert predicted["cleared_flows"] == [dict(rule="dns", protocol="udp", destinations=["127.0.0.2"], port=53, endpoint="127.0.0.3")]
    assert len(flows_to("127.0.0.3")) == 1
    assert converge([moved])["cleared_flows"] == predicted["cleared_flows"]
    assert flows_to("127.0.0.3") == []
    assert namespace_runner(["python3", "-c", send])[0] == 0
    assert len(flows_to("127.0.0.4")) == 1


def test_a_family_failing_after_another_applied_rolls_that_one_back():
    """Both families passed validation, IPv4 applied, then IPv6 failed: IPv4 is put back as it was."""
    class FailingIPv6(FakeNode):
        def __call__(self, argv, data=None):
            if argv == ["fake-apply", "ipv6"]:
                self.calls.append(argv[0])
                return 1, "", "Could not commit (the host changed)\n"
            return super(FailingIPv6, self).__call__(argv, data)

    node = FailingIPv6(EGRESS, EGRESS6)
    before = dict(node.state)
    with pytest.raises(NatRulesError) as caught:
        _run(node, "overridden", [WEB, dict(EGRESS6, random_fully=True)])
    assert str(caught.value) == ("applying of the ipv6 ruleset failed (rc=1) running fake-apply ipv6: Could not commit (the host changed); "
                                 "the ipv4 ruleset, applied before it, was rolled back: nothing changed")
    assert node.state == before
    assert node.calls.count("fake-apply") == 3     # ipv4, ipv6 (failed), ipv4 back


@pytest.mark.parametrize("backend_name", ["iptables", "iptables-legacy"])
def test_two_runs_at_once_take_turns_and_leave_one_whole_ruleset(namespace_runner, store, backend_name):
    """Each run reads, computes and applies under the host lock: the second one starts from the first one's
    result, so the host ends with exactly one of the two rulesets, never a mix."""
    if not all(shutil.which(binary) for binary in _REAL_BACKEND_BINARIES[backend_name]):
        pytest.skip("%s tools are not installed" % backend_name)
    backend = offline_backend(backend_name)
    configs = [[dict(name="%s-%d" % (team, index), type="masquerade", source=["10.%d.%d.0/24" % (number, index)])
                for index in range(40)] for number, team in enumerate(("a", "b"), start=1)]
    results = {}

    def converge(number):
        results[number] = NatRulesRun(_params("overridden", configs[number], backend=backend_name), FakeHost(namespace_runner),
                                      lambda requested: (backend, "test"), offline_backend, RecordStore(store.directory)).run()

    threads = [threading.Thread(target=converge, args=(number,)) for number in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    host = backend.read(namespace_runner)
    assert [entry.name for entry in host.entries] in ([rule["name"] for rule in configs[0]], [rule["name"] for rule in configs[1]])
    assert host.facts["unrecognized"] == []
    assert results[0]["changed"] and results[1]["changed"]


def test_config_as_json_text_and_its_errors():
    assert config_items('[{"name": "egress"}]') == [{"name": "egress"}]
    assert config_items("  ") == [] and config_items(None) == []
    with pytest.raises(RuleError, match=r"^config: is neither a list of rules nor the JSON text of one"):
        config_items("[{")
    # A big value is named by its start and size, not repeated whole.
    with pytest.raises(RuleError) as caught:
        config_items(json.dumps({"rules": ["svc-%d" % index for index in range(10000)]}))
    assert str(caught.value).startswith("config: {'rules': ['svc-0'") and str(caught.value).endswith("characters) is not a list of rules")
    assert len(str(caught.value)) < 300


def test_config_path_holds_the_json_text_of_config(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([EGRESS]))
    assert given_config(dict(config_path=str(path), config=None)) == [EGRESS] == given_config(dict(config=json.dumps([EGRESS])))
    host = FakeNode()
    result = _run(host, "merged", config_path=str(path))
    assert result["changed"] and _names(_rules(*result["after"])) == ["egress"]
    with pytest.raises(RuleError, match=r"^config_path: cannot read %s: No such file or directory$" % (tmp_path / "missing.json")):
        given_config(dict(config_path=str(tmp_path / "missing.json")))
    path.write_text("[{")
    with pytest.raises(RuleError, match=r"^config_path %s: is neither a list of rules nor the JSON text of one" % path):
        given_config(dict(config_path=str(path)))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(RuleError, match=r"^config_path: %s is not UTF-8 text" % path):
        given_config(dict(config_path=str(path)))


def test_a_long_script_is_counted_not_listed_unless_the_rules_are_asked_for():
    lines = "\n".join("line %d" % index for index in range(1500)) + "\n"
    transactions = [Transaction(("ipv4",), lines, [], []), Transaction(("ipv6",), "one\n", [], [])]
    assert listed_commands(transactions, "summary") == dict(commands=[], commands_omitted=1501)
    assert len(listed_commands(transactions, "changed")["commands"]) == 1501
    assert listed_commands(transactions[1:], "summary") == dict(commands=["one"])
