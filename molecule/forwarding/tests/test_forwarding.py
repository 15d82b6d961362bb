"""What the far end sees once the node forwards, and what a removal restores."""

PERSISTED = "/etc/sysctl.d/90-nodenet-nat.conf"


def probe(host, namespace, address):
    return host.check_output("lab.py probe %s %s 8080 --count 3 --timeout 2", namespace, address).splitlines()


def test_upstream_sees_the_client_address_over_ipv4(host):
    assert probe(host, "client", "203.0.113.2") == ["10.244.1.2 upstream"] * 3


def test_upstream_sees_the_client_address_over_ipv6(host):
    assert probe(host, "client6", "2001:db8::2") == ["fd00:10:244:1::2 upstream6"] * 3


def test_runtime_keys(host):
    assert host.sysctl("net.ipv4.ip_forward") == 1
    assert host.sysctl("net.ipv6.conf.all.forwarding") == 1
    assert host.sysctl("net.ipv4.conf.all.rp_filter") == 2
    assert host.sysctl("net.ipv4.conf.default.rp_filter") == 2
    assert host.sysctl("net.ipv4.conf.v-client.route_localnet") == 1


def test_persisted_file_holds_exactly_the_managed_keys(host):
    persisted = host.file(PERSISTED)
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


def test_absent_restores_what_it_changed(host):
    result = host.ansible("nodenet.nat.forwarding", "state=absent", check=False)
    assert result["changed"]
    assert not host.file(PERSISTED).exists
    assert host.sysctl("net.ipv4.ip_forward") == 0
    assert host.sysctl("net.ipv6.conf.all.forwarding") == 0
    assert probe(host, "client", "203.0.113.2") == ["timeout"] * 3
