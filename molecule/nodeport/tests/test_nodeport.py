"""NodePort services seen from clients, pods and the node: who answers and which source the backend saw."""
import os

CLIENT, CLIENT2 = "198.51.100.2", "192.0.2.2"
NODE_ADDRESSES = {"client": "198.51.100.1", "client2": "192.0.2.1"}
BRIDGE = "10.244.1.1"  # the node's address towards the pods: what a masqueraded connection comes from


def answers(lines):
    """(source seen, backend label) pairs; an unanswered attempt fails the split."""
    return [tuple(line.split()) for line in lines]


def test_cluster_policy_reaches_both_backends_on_every_node_address_masqueraded(node, probe):
    for namespace, address in NODE_ADDRESSES.items():
        seen = answers(probe(node, namespace, address, 30080, count=20))
        assert {source for source, _label in seen} == {BRIDGE}, (namespace, seen)
        assert {label for _source, label in seen} == {"pod-a", "pod-b"}, (namespace, seen)


def test_local_policy_keeps_the_client_source_and_uses_only_the_local_backend(node, probe):
    assert answers(probe(node, "client", NODE_ADDRESSES["client"], 30081, count=6)) == [(CLIENT, "pod-a")] * 6
    assert answers(probe(node, "client2", NODE_ADDRESSES["client2"], 30081, count=3)) == [(CLIENT2, "pod-a")] * 3


def test_cluster_ip_answers_from_the_backends(node, probe):
    seen = answers(probe(node, "client", "10.96.0.10", 30080, count=20))
    assert {label for _source, label in seen} == {"pod-a", "pod-b"}
    assert {source for source, _label in seen} == {BRIDGE}


def test_source_ranges_admit_only_clients_inside_them(node, probe):
    assert {label for _source, label in answers(probe(node, "client", NODE_ADDRESSES["client"], 30082, count=20))} == {"pod-a", "pod-b"}
    assert probe(node, "client2", NODE_ADDRESSES["client2"], 30082, count=2) == ["refused"] * 2


def test_udp_service_reaches_both_backends(node, probe):
    seen = answers(probe(node, "client", NODE_ADDRESSES["client"], 30053, udp=True, count=20))
    assert {label for _source, label in seen} == {"pod-a", "pod-b"}
    assert {source for source, _label in seen} == {BRIDGE}


def test_backend_reaches_its_own_service_through_the_hairpin_mark(node, probe):
    # Without the mark the backend would answer itself from its own address and drop the reply.
    seen = answers(probe(node, "pod-a", BRIDGE, 30080, count=20))
    assert {label for _source, label in seen} == {"pod-a", "pod-b"}
    assert {source for source, _label in seen} == {BRIDGE}


def test_client_on_the_node_itself_reaches_the_service(node, probe):
    script = ("import socket\nfor _ in range(20):\n    s = socket.create_connection(('198.51.100.1', 30080), timeout=2)\n"
              "    print(s.recv(100).decode().strip())\n    s.close()")
    seen = answers(node.check_output("python3 -c %s", script).splitlines())
    assert {label for _source, label in seen} == {"pod-a", "pod-b"}


def test_removed_service_stops_answering(host, node, probe, playbook):
    assert answers(probe(node, "client", NODE_ADDRESSES["client"], 30099, count=2))[0][0] == BRIDGE
    playbook(os.path.join(os.environ["MOLECULE_SCENARIO_DIRECTORY"], "drop_service.yml"), "--limit", host.backend.get_hostname())
    assert probe(node, "client", NODE_ADDRESSES["client"], 30099, count=2) == ["refused"] * 2
    assert len(answers(probe(node, "client", NODE_ADDRESSES["client"], 30080, count=2))) == 2
    assert "nodeport-gone" not in node.check_output("nft list ruleset; iptables-legacy-save -t nat")
