"""The nodeport role's rule builder: names, order, policies, families and input validation."""
import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.nodenet.nat.plugins.filter.nodeport_rules import nodeport_rules

WEB = {"name": "web", "port": 30080, "backends": [{"address": "10.244.1.10", "port": 8080}, {"address": "10.244.2.10", "port": 8080}]}


def by_name(rules):
    return {rule["name"]: rule for rule in rules}


def test_cluster_policy_marks_clears_for_pods_marks_hairpin_then_dnats_in_order():
    rules = nodeport_rules([WEB], pod_cidrs=["10.244.0.0/16", "fd00:10:244::/48"])
    assert [rule["name"] for rule in rules] == [
        "nodeport-web-np-mark-v4", "nodeport-web-np-clear0-v4", "nodeport-web-np-hairpin-v4", "nodeport-web-np-dnat-v4",
        "nodeport-web-np-out-mark-v4", "nodeport-web-np-out-dnat-v4", "nodeport-masquerade-v4"]
    named = by_name(rules)
    assert named["nodeport-web-np-clear0-v4"]["source"] == ["10.244.0.0/16"]
    assert named["nodeport-web-np-clear0-v4"]["set_mark"] == "0x0/0x4000"
    assert named["nodeport-web-np-dnat-v4"]["to_destination"] == ["10.244.1.10:8080", "10.244.2.10:8080"]
    assert named["nodeport-web-np-dnat-v4"]["destination_type"] == "local"
    assert named["nodeport-web-np-out-dnat-v4"]["destination"] == ["127.0.0.0/8"]
    assert named["nodeport-web-np-out-dnat-v4"]["destination_negate"] is True
    assert named["nodeport-masquerade-v4"] == {"name": "nodeport-masquerade-v4", "family": "ipv4", "type": "masquerade",
                                               "chain": "postrouting", "mark": "0x4000/0x4000", "random_fully": True}


def test_local_policy_keeps_only_local_backends_and_sets_no_masquerade_mark():
    service = dict(WEB, external_traffic_policy="Local")
    named = by_name(nodeport_rules([service], pod_cidrs=["10.244.1.0/24"]))
    assert named["nodeport-web-np-dnat-v4"]["to_destination"] == ["10.244.1.10:8080"]
    assert sorted(named) == ["nodeport-masquerade-v4", "nodeport-web-np-dnat-v4", "nodeport-web-np-hairpin-v4",
                             "nodeport-web-np-out-dnat-v4"]


def test_local_policy_without_local_backend_has_no_rules():
    assert nodeport_rules([dict(WEB, external_traffic_policy="Local")], pod_cidrs=["10.244.9.0/24"]) == []


def test_cluster_ip_source_ranges_addresses_and_ipv6():
    service = {"name": "dual", "port": 30053, "protocol": "udp", "cluster_ip": "fd00:96::a", "source_ranges": ["2001:db8::/32"],
               "backends": [{"address": "fd00:10:244:1::10", "port": 53}, {"address": "10.244.1.10", "port": 53}]}
    named = by_name(nodeport_rules([service], addresses=["2001:db8::1", "192.0.2.1"], mark=0x8000))
    assert not [name for name in named if name.endswith("-v4")]  # no IPv4 source range: no IPv4 rules
    assert named["nodeport-dual-np-dnat-v6"]["destination"] == ["2001:db8::1"]
    assert named["nodeport-dual-np-dnat-v6"]["source"] == ["2001:db8::/32"]
    assert named["nodeport-dual-np-dnat-v6"]["to_destination"] == ["[fd00:10:244:1::10]:53"]
    assert named["nodeport-dual-cip-dnat-v6"]["destination"] == ["fd00:96::a"]
    assert named["nodeport-dual-np-mark-v6"]["set_mark"] == "0x8000/0x8000"
    assert named["nodeport-masquerade-v6"]["family"] == "ipv6"


@pytest.mark.parametrize("service, message", [
    (dict(WEB, name="Web_1"), "name"),
    (dict(WEB, name="x" * 41), "name"),
    (dict(WEB, protocol="icmp"), "protocol"),
    (dict(WEB, port=70000), "port"),
    (dict(WEB, backends=[]), "backends"),
    (dict(WEB, backends=[{"address": "10.244.1.300", "port": 80}]), "backends[].address"),
    (dict(WEB, external_traffic_policy="local"), "external_traffic_policy"),
    (dict(WEB, source_ranges=["10.0.0.1/8"]), "source_ranges"),
])
def test_bad_input_fails_naming_the_field(service, message):
    with pytest.raises(AnsibleFilterError, match=r"service '?%s'?.*%s=" % (service["name"][:5], message.replace("[", r"\[").replace("]", r"\]"))):
        nodeport_rules([service])


def test_duplicate_service_names_fail():
    with pytest.raises(AnsibleFilterError, match="duplicate"):
        nodeport_rules([WEB, WEB])


def test_json_text_is_the_same_rules():
    import json
    assert json.loads(nodeport_rules([WEB], pod_cidrs=["10.244.0.0/16"], as_json=True)) == nodeport_rules([WEB], pod_cidrs=["10.244.0.0/16"])


def test_rules_of_one_kind_come_together_for_every_service():
    other = dict(WEB, name="api", port=30081)
    names = [rule["name"] for rule in nodeport_rules([WEB, other], pod_cidrs=["10.244.0.0/16"])]
    assert names[:4] == ["nodeport-web-np-mark-v4", "nodeport-api-np-mark-v4", "nodeport-web-np-clear0-v4", "nodeport-api-np-clear0-v4"]


@pytest.mark.parametrize("service, field", [
    (dict(WEB, name="web\n"), "name="),
    (dict(WEB, protocl="udp"), "unknown keys protocl"),
    (dict(WEB, backends=[{"address": "10.244.1.10", "port": 8080, "weight": 2}]), "unknown keys weight"),
])
def test_bad_service_entries_are_refused_naming_the_field(service, field):
    with pytest.raises(AnsibleFilterError, match=field):
        nodeport_rules([service])
