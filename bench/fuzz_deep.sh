#!/usr/bin/env bash
# Deep fuzzing: every target in tests/fuzz with the "deep" hypothesis profile
# (100,000 examples per target, fresh randomness; tests/fuzz/conftest.py).
#
#   bash bench/fuzz_deep.sh [pytest -k expression]
#
# Each test is its own pytest run, so one slow or failing target does not hold
# up the others and its log stands alone.  FUZZ_JOBS runs (default 2, one
# per core) go at once, cheapest files first, so a run cut short still has
# the most targets done.  Results go to FUZZ_OUT (default
# /tmp/authsvc-fuzz-<time>): one log per target with hypothesis's statistics
# (examples run, time, events) and summary.tsv (target, exit status,
# seconds, examples that passed, examples that failed).  A failure prints its
# shrunk example and a @reproduce_failure blob in its log.
# AUTHSVC_FUZZ_EXAMPLES=N (see conftest.py) runs N examples instead.
set -uo pipefail
cd "$(dirname "$0")/.."

out="${FUZZ_OUT:-/tmp/authsvc-fuzz-$(date +%Y%m%d-%H%M%S)}"
jobs="${FUZZ_JOBS:-2}"
mkdir -p "$out"
export AUTHSVC_FUZZ_PROFILE=deep

# Cheapest per example first (measured at 3,000 examples each).
files=(
  tests/fuzz/test_fuzz_sasl.py
  tests/fuzz/test_fuzz_linebuffer.py
  tests/fuzz/test_fuzz_proxy_protocol.py
  tests/fuzz/test_fuzz_http.py
  tests/fuzz/test_fuzz_config.py
  tests/fuzz/test_fuzz_pop3.py
  tests/fuzz/test_fuzz_imap.py
)
select=()
if [ $# -gt 0 ]; then select=(-k "$1"); fi
.venv/bin/pytest -q --collect-only -p no:cacheprovider "${select[@]}" "${files[@]}" \
  | grep '::' > "$out/targets.txt"
echo "$(wc -l < "$out/targets.txt") targets, $jobs at a time, logs in $out"

run_one() {
  local node="$1" out="$2" log start rc secs stats
  log="$out/$(printf '%s' "$node" | tr '/:[]' '____').log"
  start=$(date +%s)
  .venv/bin/pytest -q -p no:cacheprovider --hypothesis-show-statistics "$node" > "$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  # "- 100000 passing, 0 failing, and 812 invalid test cases" (generate phase)
  stats=$(grep -m1 -oE '[0-9]+ passing, [0-9]+ failing' "$log" \
          | sed -E 's/ passing, /\t/; s/ failing//')
  printf '%s\t%s\t%s\t%s\n' "$node" "$rc" "$secs" "${stats:-	}" >> "$out/summary.tsv"
  printf '%-90s rc=%s %5ss %s\n' "$node" "$rc" "$secs" "${stats:-(no hypothesis run)}"
}
export -f run_one

started=$(date +%s)
printf 'target\trc\tseconds\tpassing\tfailing\n' > "$out/summary.tsv"
xargs -a "$out/targets.txt" -d '\n' -P "$jobs" -I{} bash -c 'run_one "$1" "$2"' _ {} "$out"
echo "total wall time: $(( $(date +%s) - started ))s; summary: $out/summary.tsv"
! awk -F'\t' 'NR > 1 && $2 != 0 { bad = 1 } END { exit !bad }' "$out/summary.tsv"
