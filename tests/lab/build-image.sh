#!/usr/bin/env bash
# Build the lab's node image from Debian packages (no registry exists) and cache it in podman's storage.
# About a minute: debootstrap's stages are shown as they happen (and every 25th package), its whole
# output goes to a log that is shown when it fails.
set -euo pipefail

IMAGE="${NODENET_LAB_IMAGE:-localhost/nodenet-nat-node:bookworm-2}"
# openssh-server: the rollback scenario reaches its nodes over ssh, a management path a NAT rule can cut (podman exec cannot be).
PACKAGES="python3,python-is-python3,iproute2,iptables,nftables,conntrack,procps,kmod,openssh-server"
HERE="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"

if podman image exists "$IMAGE"; then
    echo "image $IMAGE is cached"
    exit 0
fi

# The mirror this machine's apt already uses, so the image comes from the same source.
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
rootfs="$(mktemp -d)"

log="$rootfs.log"
trap 'rm -rf "$rootfs" "$log"' EXIT
say() { printf '%(%T)T  %s\n' -1 "$*"; }

# debootstrap prints one line per package and step ("I: Retrieving libc6 2.36-9+deb12u9", "I: Unpacking
# libc6:amd64..."): show its other lines (the stages) and, per step, every 25th package with a count.
progress() {
    local line step
    local -A count=()
    local package='^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ([^ ]+ [^ ]+|[^ ]+\.\.\.)$'
    while IFS= read -r line; do
        printf '%s\n' "$line" >> "$log"
        if [[ $line =~ $package ]]; then
            step=${BASH_REMATCH[1]}
            count[$step]=$(( ${count[$step]:-0} + 1 ))
            if (( count[$step] % 25 == 0 )); then say "  $step: ${count[$step]} packages (${BASH_REMATCH[2]%...})"; fi
        else
            say "${line#I: }"
        fi
    done
}

say "building $IMAGE: debootstrap bookworm (minbase + $PACKAGES) into $rootfs"
start=$SECONDS
if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" ${mirror:+"$mirror"} 2>&1 | progress; then
    echo "debootstrap failed; its last lines:"
    tail -30 "$log"
    exit 1
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
# No ssh host key in the image (every container would share it): a test that starts sshd runs ssh-keygen -A first.
rm -f "$rootfs"/etc/ssh/ssh_host_*
say "debootstrap done in $((SECONDS - start)) s; importing into podman"
tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["sleep", "infinity"]' - "$IMAGE" >/dev/null
say "built $IMAGE in $((SECONDS - start)) s"
