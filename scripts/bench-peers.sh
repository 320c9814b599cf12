#!/usr/bin/env bash
# The peers benchmark (BENCHMARKS.md, "The engine beside its peers"): one 4-rule first-match
# decision, 1,000 inputs per pool, in rulestream (CEL `when` rules and JSON `conditions`),
# zen-expression, a zen-engine decision table, the `cel` crate done naively, json-rules-engine
# (node) and hand-written Rust. Every engine is first checked against the hand-written oracle on
# every input; then all are timed, interleaved, in the same rounds; then callgrind counts the
# instructions per decision of the Rust ones (wall times drift here, instruction counts do not).
#
#   bash scripts/bench-peers.sh            # ROUNDS=15 PASSES=2 by default
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ROUNDS="${ROUNDS:-15}"
PASSES="${PASSES:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rulestream/target}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need valgrind; then
  echo "bench-peers: installing valgrind (apt)" >&2
  if [[ $(id -u) -eq 0 ]]; then apt-get install -y -q valgrind >/dev/null; else sudo apt-get install -y -q valgrind >/dev/null; fi
fi
need node || { echo "bench-peers: node is needed for json-rules-engine" >&2; exit 2; }

# Its own workspace (bench/peers), so `make test` never builds zen-engine; release profile.
(cd "$REPO/bench/peers" && cargo build --release --locked -q)
(cd "$REPO/bench/peers/js" && { [[ -d node_modules/json-rules-engine ]] || npm ci --no-audit --no-fund -q; })
P="$CARGO_TARGET_DIR/release/rulestream-peers"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$P" pools >"$TMP/pools.json"

echo "## $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m), rustc $(rustc --version | cut -d' ' -f2), node $(node --version)"
echo
"$P" check
echo
echo "Wall time, median of $ROUNDS interleaved rounds:"
echo
"$P" time "$ROUNDS" "$TMP/pools.json"
echo
echo "Instructions per decision (callgrind; a warm-up pass, then $PASSES passes over the 1,000 inputs, less the same run with none):"
echo
count() { # engine pool passes -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$P" count "$1" "$2" "$3" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
echo "| engine | mix pool | miss pool |"
echo "|---|---|---|"
for e in zen-expression zen-table cel-naive rulestream-when rulestream-conditions hand-written; do
  row="| $e |"
  for pool in mix miss; do
    base="$(count "$e" "$pool" 0)"
    more="$(count "$e" "$pool" "$PASSES")"
    per=$(( (more - base) / (PASSES * 1000) ))
    row="$row $(awk -v n="$per" 'BEGIN { if (n >= 1000) printf "%.1f k", n / 1000; else printf "%d", n }') |"
  done
  echo "$row"
done
echo
echo "The acme-bank trade pre-clearance sample through rulestream (its 8 examples, each checked"
echo "against its expected status; callgrind, a warm-up pass then $PASSES passes, less none):"
echo
base="$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$P" count-preclear 0 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')"
more="$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$P" count-preclear "$PASSES" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')"
runs="$("$P" count-preclear 0 | cut -d' ' -f1)"
echo "| acme-bank/trade-preclear, instructions per run | $(( (more - base) / (PASSES * runs) )) |"

