#!/usr/bin/env bash
# The e2e suite on the real local stack: LocalStack (DynamoDB + Streams, S3, STS, Secrets
# Manager), Redis, the orchestrator binary under `cargo lambda watch`, and two event-source
# runners: one for <prefix>-trigger, one for <prefix>-trigger-dup that delivers every batch twice.
# Brings the stack up from nothing, runs the tests, and stops what it started (KEEP_STACK=1 keeps
# it running for a look around).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export RULESTREAM_PREFIX="${RULESTREAM_PREFIX:-rs-e2e}"
source "$HERE/env.sh"
S="$RULESTREAM_STATE"
mkdir -p "$S"

cleanup() {
  local rc=$?
  for name in runner-e2e runner-e2e-dup; do
    if [[ -f "$S/$name.pid" ]]; then
      kill "$(cat "$S/$name.pid")" 2>/dev/null || true
      rm -f "$S/$name.pid"
    fi
  done
  if [[ "${KEEP_STACK:-0}" != 1 ]]; then
    bash "$HERE/down.sh" || true
  fi
  if [[ $rc -ne 0 ]]; then
    for log in lambda runner-e2e runner-e2e-dup; do
      [[ -f "$S/$log.log" ]] && { echo "---- tail of $S/$log.log ----"; tail -n 30 "$S/$log.log"; }
    done
  fi
  exit $rc
}
trap cleanup EXIT

bash "$HERE/up.sh"
"$RULESTREAM_PY" "$HERE/provision.py"
"$RULESTREAM_PY" "$HERE/seed.py" --extra-trigger-table "$RULESTREAM_PREFIX-trigger-dup"
RULESTREAM_LAMBDA_CONCURRENCY="${RULESTREAM_LAMBDA_CONCURRENCY:-4}" bash "$HERE/lambda.sh" start

start_runner() { # name table [extra args]
  local name=$1 table=$2
  shift 2
  (cd "$REPO" && exec setsid "$RULESTREAM_PY" "$HERE/runner.py" --table "$table" \
    --failures-file "$S/$name.failures.jsonl" "$@" >"$S/$name.log" 2>&1 </dev/null) &
  echo $! >"$S/$name.pid"
}
start_runner runner-e2e "$RULESTREAM_PREFIX-trigger"
start_runner runner-e2e-dup "$RULESTREAM_PREFIX-trigger-dup" --duplicate

cd "$REPO"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p rulestream-e2e --no-fail-fast -E 'not binary(redis_down)'
  cargo nextest run -p rulestream-e2e --no-fail-fast -E 'binary(redis_down)'
else
  cargo test -p rulestream-e2e --test chain
  cargo test -p rulestream-e2e --test redis_down
fi
