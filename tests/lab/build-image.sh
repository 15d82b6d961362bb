#!/usr/bin/env bash
# Build the lab's node image from Debian packages (no registry exists) and cache it in podman's storage.
set -euo pipefail

IMAGE="${NODENET_LAB_IMAGE:-localhost/nodenet-nat-node:bookworm-1}"
PACKAGES="python3,python-is-python3,iproute2,iptables,nftables,conntrack,procps,kmod"
HERE="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"

if podman image exists "$IMAGE"; then
    echo "image $IMAGE is cached"
    exit 0
fi

# The mirror this machine's apt already uses, so the image comes from the same source.
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap bookworm into $rootfs"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" ${mirror:+"$mirror"} > "$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["sleep", "infinity"]' - "$IMAGE"
echo "built $IMAGE"
