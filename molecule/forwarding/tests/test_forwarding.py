"""What the far end sees once the node forwards, and what a removal restores."""

PERSISTED = "/etc/sysctl.d/90-nodenet-nat.conf"


def test_upstream_sees_the_client_address_over_ipv4(node, probe):
    assert probe(node, "client", "203.0.113.2", count=3) == ["10.244.1.2 upstream"] * 3


def test_upstream_sees_the_client_address_over_ipv6(node, probe):
    assert probe(node, "client6", "2001:db8::2", count=3) == ["fd00:10:244:1::2 upstream6"] * 3


def test_runtime_keys(node):
    assert node.sysctl("net.ipv4.ip_forward") == 1
    assert node.sysctl("net.ipv6.conf.all.forwarding") == 1
    assert node.sysctl("net.ipv4.conf.all.rp_filter") == 2
    assert node.sysctl("net.ipv4.conf.default.rp_filter") == 2
    assert node.sysctl("net.ipv4.conf.v-client.route_localnet") == 1


def test_persisted_file_holds_exactly_the_managed_keys(node):
    persisted = node.file(PERSISTED)
    assert persisted.exists
    settings = dict(
        line.split("=", 1) for line in (raw.replace(" ", "") for raw in persisted.content_string.splitlines())
        if line and not line.startswith("#")
    )
    assert settings == {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "1",
        "net.ipv4.conf.all.rp_filter": "2",
        "net.ipv4.conf.default.rp_filter": "2",
        "net.ipv4.conf.v-client.route_localnet": "1",
    }


def test_absent_restores_what_it_changed(node, probe, module):
    result = module("nodenet.nat.forwarding", {"state": "absent"})
    assert result["changed"]
    assert not node.file(PERSISTED).exists
    assert node.sysctl("net.ipv4.ip_forward") == 0
    assert node.sysctl("net.ipv6.conf.all.forwarding") == 0
    assert probe(node, "client", "203.0.113.2", count=3) == ["timeout"] * 3
