#!/usr/bin/env bash
# Converge playbooks/site.yml on a local container lab and show, with real packets, what it changed.
# The node container has no network of its own (podman's bridge would touch the host); the lab's
# client and upstream hosts are namespaces inside it. Everything is removed on exit.
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
lab host client 10.244.1.2/24 10.244.1.1/24 --route default
lab host upstream 203.0.113.2/24 203.0.113.1/24 --route 10.244.0.0/16
lab serve upstream 8080 upstream

echo "== before: client 10.244.1.2 -> upstream 203.0.113.2:8080 through the node"
lab probe client 203.0.113.2 8080 --timeout 1

ansible-playbook -i tests/lab/demo/inventory.yml playbooks/site.yml

echo "== after: what upstream saw"
lab probe client 203.0.113.2 8080 --count 3
