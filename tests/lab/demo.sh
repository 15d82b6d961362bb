#!/usr/bin/env bash
# Converge playbooks/site.yml on a local container lab and show, with real packets, what it changed.
# The node container has no network of its own (podman's bridge would touch the host); the pods,
# the external client and the upstream "internet" host are namespaces inside it. The upstream
# host has no route back to the pods, so only NAT on the node lets them talk. Everything is
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="localhost/nodenet-nat-node:bookworm-1"
NODE="nodenet-demo-node"

cleanup() { podman rm --force --time 0 "$NODE" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

podman run --detach --name "$NODE" --privileged --network none "$IMAGE" sleep infinity >/dev/null
podman cp tests/lab/lab.py "$NODE":/usr/local/bin/lab.py
lab() { podman exec "$NODE" lab.py "$@"; }
lab bridge cni0 10.244.1.1/24
lab pod pod-a cni0 10.244.1.10/24 10.244.1.1
lab pod pod-b cni0 10.244.1.11/24 10.244.1.1
lab host client 198.51.100.2/24 198.51.100.1/24 --route default
lab host upstream 203.0.113.2/24 203.0.113.1/24
lab serve pod-a 8080 pod-a
lab serve pod-b 8080 pod-b
lab serve upstream 8080 upstream

show() {
    echo "-- pod-a 10.244.1.10 -> upstream 203.0.113.2:8080 (the answer names the source upstream saw)"
    lab probe pod-a 203.0.113.2 8080 --timeout 1
    echo "-- client 198.51.100.2 -> NodePort 198.51.100.1:30080, 4 connections (source the pod saw, pod)"
    lab probe client 198.51.100.1 30080 --count 4 --timeout 1
    echo "-- pod-a -> its own service 10.96.0.10:30080, 3 connections (hairpin; pod-a must answer too)"
    lab probe pod-a 10.96.0.10 30080 --count 3 --timeout 1
}

echo "== before"
show
ansible-playbook -i tests/lab/demo/inventory.yml playbooks/site.yml
echo "== after"
show
