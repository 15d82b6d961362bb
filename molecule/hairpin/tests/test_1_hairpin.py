"""After converge: pods reach themselves and each other through the service, ports are in hairpin mode."""

SERVICE = ("10.96.0.10", 80)
TARGETS = [("pod-a",) + SERVICE, ("pod-b",) + SERVICE]


def test_pod_reaches_itself_through_its_service_and_sees_the_bridge_address(probes):
    assert probes[("pod-a",) + SERVICE] == ["10.244.1.1 pod-a"] * 2


def test_other_pod_reaches_it_through_the_service(probes):
    assert probes[("pod-b",) + SERVICE] == ["10.244.1.1 pod-a"] * 2


def test_ports_are_in_hairpin_mode_and_bridged_traffic_passes_netfilter(node):
    flags = node.check_output(
        "cat /sys/class/net/br0/brif/v-pod-a/hairpin_mode /sys/class/net/br0/brif/v-pod-b/hairpin_mode"
        " /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables")
    assert flags.split() == ["1", "1", "1", "1"]
