#!/usr/bin/env bash
# Run one molecule scenario (`molecule test -s NAME`) and show its progress while it runs: one timestamped
# line as each molecule action starts and ends (and the verifier's pytest summary), the whole output in
# build/molecule/NAME.log, printed in full when the scenario fails. `make molecule` runs several at once.
#   tests/molecule-scenario.sh NAME
set -uo pipefail

scenario="$1"
log_dir="${MOLECULE_LOG_DIR:-build/molecule}"
log="$log_dir/$scenario.log"
mkdir -p "$log_dir"

say() { printf '%(%T)T  %-12s %s\n' -1 "$scenario" "$*"; }

# Molecule's plain log lines: "INFO     [fleet > converge] Executing", "... Executed: Successful".
progress() {
    local line action="" began=$SECONDS
    local pattern='^[A-Z]+ +\[[^ ]+ > ([a-z_]+)\] (Executing|Executed: (.*))$'
    while IFS= read -r line; do
        if [[ $line =~ $pattern ]]; then
            if [[ ${BASH_REMATCH[2]} == Executing ]]; then
                action=${BASH_REMATCH[1]}
                began=$SECONDS
                say "$action ..."
            else
                say "$action: ${BASH_REMATCH[3]} ($((SECONDS - began)) s)"
            fi
        elif [[ $line =~ ^=+\ (.*\ in\ [0-9.]+s.*)\ =+$ ]]; then
            say "$action: pytest ${BASH_REMATCH[1]}"
        fi
    done
}

say "start (output: $log)"
start=$SECONDS
NO_COLOR=1 PYTHONUNBUFFERED=1 molecule test -s "$scenario" 2>&1 | tee "$log" | progress
status=${PIPESTATUS[0]}
if [[ $status -ne 0 ]]; then
    echo "==== $scenario failed: its whole output ($log) ===="
    cat "$log"
    echo "==== end of $scenario's output ===="
fi
say "exit $status after $((SECONDS - start)) s"
exit "$status"
