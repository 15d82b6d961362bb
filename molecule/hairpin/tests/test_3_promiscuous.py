"""The installed script's promiscuous-bridge mode (hairpin_mode: promiscuous-bridge runs the same command)."""

IFF_PROMISC = 0x100


def promiscuous(node):
    return bool(int(node.file("/sys/class/net/br0/flags").content_string, 16) & IFF_PROMISC)


def test_check_reports_the_bridge_and_changes_nothing_then_apply_is_idempotent(node):
    script = "/usr/local/sbin/nodenet-hairpin"
    assert not promiscuous(node)
    assert node.check_output("%s apply br0 promiscuous-bridge --check", script) == "br0"
    assert not promiscuous(node)
    assert node.check_output("%s apply br0 promiscuous-bridge", script) == "br0"
    assert promiscuous(node)
    assert node.check_output("%s apply br0 promiscuous-bridge", script) == ""
    assert node.check_output("%s apply br0", script) == ""  # hairpin-veth: every port already has it
