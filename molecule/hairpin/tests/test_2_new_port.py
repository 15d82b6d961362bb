"""Ports that join later: the unit's ExecStart command (what systemd would run) gives a new pod hairpin mode."""
import re

UNIT = "/etc/systemd/system/nodenet-hairpin@.service"


def test_new_pod_gets_hairpin_and_reaches_itself(node, module, backend):
    exec_start = re.search(r"^ExecStart=(.*)$", node.file(UNIT).content_string, re.MULTILINE).group(1)
    command = exec_start.replace("%i", "br0")
    assert command == "/usr/local/sbin/nodenet-hairpin watch br0"
    service = module("nodenet.nat.nat_rules", dict(
        backend=backend, state="merged", scope="test-service-",
        config=[dict(name="test-service-new", type="dnat", chain="prerouting", destination=["10.96.0.11"],
                     protocol="tcp", destination_ports=[80], to_destination=["10.244.1.4:8080"])]))
    assert service["changed"]
    # The watcher runs in the background (no systemd in the lab container), then pod c joins the bridge.
    output = node.check_output("bash -c %s", "; ".join([
        "setsid -f %s </dev/null >/dev/null 2>&1" % command,
        "sleep 1",
        "lab.py pod pod-c br0 10.244.1.4/24 10.244.1.1",
        "lab.py serve pod-c 8080 pod-c",
        "for i in 1 2 3 4 5 6 7 8 9 10; do [ $(cat /sys/class/net/br0/brif/v-pod-c/hairpin_mode) = 1 ] && break; sleep 0.5; done",
        "cat /sys/class/net/br0/brif/v-pod-c/hairpin_mode",
        "lab.py probe pod-c 10.96.0.11 80 --count 2 --timeout 2",
    ])).splitlines()
    assert output == ["1", "10.244.1.1 pod-c", "10.244.1.1 pod-c"]
