#!/usr/bin/env bash
# Load the NAT rules nodenet.nat owns from the files nodenet.nat.nat_rules persisted (persist: true).
# Installed by the nodenet.nat.persist role; nodenet-nat.service runs it once at boot, after the host's own
# firewall rules (which may flush the whole ruleset).
#   nodenet-nat-restore FILE...
# A FILE that does not exist is skipped (the back ends not in use have none). The second line of each FILE names
# what loads it ("# nodenet-nat-restore: ..."):
#   nft                      nft -f FILE: the file deletes and re-creates the owned tables in one transaction
#   RESTORE SAVE             the iptables variant's tools for the file's family: ONE RESTORE --noflush transaction
#                            deletes the jump rules to NODENET-* chains that SAVE lists in the built-in chains of
#                            table nat, then runs FILE (it declares the owned chains, which flushes them, fills them
#                            and inserts one jump per built-in chain); a file without rules changes nothing
# Loading twice therefore gives the same ruleset. Runs under the lock of nodenet.nat.nat_rules
# (NODENET_NAT_RUN_DIR, default /run/nodenet-nat, per network namespace), so it never interleaves with a run.
# Exits 1 if a file could not be loaded (after trying the others), 2 on a usage error.
set -euo pipefail

run_dir=${NODENET_NAT_RUN_DIR:-/run/nodenet-nat}

lock() {
    local dir
    dir="$run_dir/netns-$(stat -L -c %i /proc/self/ns/net)"
    mkdir -p "$run_dir"
    [ -d "$dir" ] || mkdir -m 0700 "$dir"
    exec 9>>"$dir/lock"
    if ! flock -w 300 9; then
        echo "nodenet-nat-restore: a nat_rules run held $dir/lock for 300 s" >&2
        exit 1
    fi
}

# The jump rules to NODENET-* chains in the built-in chains of table nat, as iptables-restore lines that delete them.
jump_deletions() {
    "$1" -t nat | sed -n -E 's/^-A ((PREROUTING|INPUT|OUTPUT|POSTROUTING)( .*)? -[jg] NODENET-[^ ]+)$/-D \1/p'
}

load_iptables() {
    local file=$1 restore=$2 save=$3 deletions
    case ${restore##*/}:${save##*/} in
        iptables*-restore:iptables*-save | ip6tables*-restore:ip6tables*-save) ;;
        *) echo "nodenet-nat-restore: $file: $restore $save are not iptables restore and save tools" >&2; return 1 ;;
    esac
    grep -q '^\*nat$' "$file" || return 0
    deletions=$(jump_deletions "$save") || return 1
    # The deletions go right after "*nat", in the same transaction as the file's lines.
    DELETIONS=$deletions awk '{ print } $0 == "*nat" && ENVIRON["DELETIONS"] != "" { print ENVIRON["DELETIONS"] }' "$file" \
        | "$restore" -w --noflush
}

load() {
    local file=$1 line how
    line=$(sed -n '2s/^# nodenet-nat-restore: //p' "$file")
    read -r -a how <<< "$line"
    case ${#how[@]}:${how[0]:-} in
        1:nft) nft -f "$file" ;;
        2:*) load_iptables "$file" "${how[@]}" ;;
        *) echo "nodenet-nat-restore: $file: its second line does not say how to load it (\"# nodenet-nat-restore: ...\");" \
                "nodenet.nat.nat_rules with persist writes it again" >&2
           return 1 ;;
    esac
}

if [ $# -eq 0 ]; then
    echo "usage: $0 FILE..." >&2
    exit 2
fi
lock
status=0
for file in "$@"; do
    [ -e "$file" ] || continue
    if load "$file"; then
        echo "nodenet-nat-restore: loaded $file"
    else
        echo "nodenet-nat-restore: could not load $file" >&2
        status=1
    fi
done
exit "$status"
