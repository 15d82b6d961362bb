#!/usr/bin/env bash
# Hairpin mode for the ports of a Linux bridge (installed by the nodenet.nat.hairpin role).
#   nodenet-hairpin apply BRIDGE [MODE] [--check]
#       MODE hairpin-veth (default): hairpin_mode=1 on every current port of BRIDGE;
#       MODE promiscuous-bridge: BRIDGE in promiscuous mode.
#       Prints one line per port (or bridge) it changed (with --check: would change); a missing bridge is no error.
#   nodenet-hairpin watch BRIDGE
#       apply, then apply again on every link event of a port of BRIDGE (ports that join later); runs until killed.
set -euo pipefail

apply_veth() {
    local bridge=$1 check=$2 port
    for port in /sys/class/net/"$bridge"/brif/*; do
        [ -e "$port/hairpin_mode" ] || continue
        if [ "$(cat "$port/hairpin_mode")" != 1 ]; then
            [ "$check" = 1 ] || echo 1 > "$port/hairpin_mode"
            echo "${port##*/}"
        fi
    done
}

apply_promiscuous() {
    local bridge=$1 check=$2
    [ -d "/sys/class/net/$bridge" ] || return 0
    # IFF_PROMISC is 0x100 in the interface flags.
    if (( ! ($(cat "/sys/class/net/$bridge/flags") & 0x100) )); then
        [ "$check" = 1 ] || ip link set dev "$bridge" promisc on
        echo "$bridge"
    fi
}

apply() {
    local bridge=$1 mode=${2:-hairpin-veth} check=${3:-0}
    case $mode in
        hairpin-veth) apply_veth "$bridge" "$check" ;;
        promiscuous-bridge) apply_promiscuous "$bridge" "$check" ;;
        *) echo "unknown mode: $mode" >&2; return 2 ;;
    esac
}

watch_bridge() {
    local bridge=$1 line
    apply "$bridge" >/dev/null
    # `ip monitor link` prints one line per link message; a port of BRIDGE shows "master BRIDGE".
    while read -r line; do
        case " $line " in
            *" master $bridge "*) apply "$bridge" >/dev/null ;;
        esac
    done < <(exec ip monitor link)
}

case ${1:-} in
    apply)
        [ $# -ge 2 ] || { echo "usage: $0 apply BRIDGE [MODE] [--check]" >&2; exit 2; }
        check=0
        [ "${*: -1}" = --check ] && check=1 && set -- "${@:1:$#-1}"
        apply "$2" "${3:-hairpin-veth}" "$check"
        ;;
    watch)
        [ $# -eq 2 ] || { echo "usage: $0 watch BRIDGE" >&2; exit 2; }
        watch_bridge "$2"
        ;;
    *)
        echo "usage: $0 apply BRIDGE [MODE] [--check] | watch BRIDGE" >&2
        exit 2
        ;;
esac
