#!/usr/bin/env bash
# The e2e suite on the real local stack: LocalStack (DynamoDB + Streams, S3, STS, Secrets
# Manager, SQS), Redis (TLS + AUTH), the function binaries under `cargo lambda watch` (their AWS calls
# through localstack/faultproxy.py), two event-source
# runners (the stream mapping settings of template.yaml's OrchestratorFunction: batch 100, bisect,
# 5 retries, 1 h record age, 30 s timeout, INSERT filter, on-failure queue <prefix>-orchestrator-dlq):
# one for <prefix>-trigger, one for <prefix>-trigger-dup that delivers every batch twice,
# the releases topic's runner (localstack/kafka_runner.py -> release-bridge),
# and the scheduler that invokes the sweeper every RULESTREAM_SWEEP_INTERVAL_SECS (when
# functions/sweeper exists). Brings the stack up from nothing, runs the tests, and stops what it
# started (KEEP_STACK=1 keeps it running for a look around).
#
# The sweeper's timings are short here so retries and stalls show within seconds (each can be
# overridden from the environment): a sweep every 2 s, an execution with no progress for 300 s is
# stalled (not shorter: two tests of hundreds of executions share one stream shard here, and a
# record queued behind them for a minute is not lost), delivery retries after 0.2, 0.4 ... 1.4 s. They are exported before lambda.sh starts
# the functions (lambda.env carries every RULESTREAM_* variable) and the tests see them too.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export RULESTREAM_PREFIX="${RULESTREAM_PREFIX:-rs-e2e}"
export RULESTREAM_SWEEP_INTERVAL_SECS="${RULESTREAM_SWEEP_INTERVAL_SECS:-2}"
export RULESTREAM_STALL_SECS="${RULESTREAM_STALL_SECS:-300}"
export RULESTREAM_DELIVERY_BACKOFF_MS="${RULESTREAM_DELIVERY_BACKOFF_MS:-200,400,600,800,1000,1200,1400}"
source "$HERE/env.sh"
source "$HERE/procs.sh"
S="$RULESTREAM_STATE"
mkdir -p "$S"

cleanup() {
  local rc=$?
  stop_pidfile scheduler-e2e scheduler.py e2e
  stop_pidfile faultproxy faultproxy.py e2e
  stop_pidfile rule-risk app.py e2e
  for name in runner-e2e runner-e2e-dup; do
    stop_pidfile "$name" runner.py e2e
  done
  stop_pidfile kafka-runner-e2e kafka_runner.py e2e
  if [[ "${KEEP_STACK:-0}" != 1 ]]; then
    bash "$HERE/down.sh" || true
  fi
  if [[ $rc -ne 0 ]]; then
    for log in lambda runner-e2e runner-e2e-dup kafka-runner-e2e scheduler-e2e; do
      [[ -f "$S/$log.log" ]] && { echo "---- tail of $S/$log.log ----"; tail -n 30 "$S/$log.log"; }
    done
  fi
  exit $rc
}
trap cleanup EXIT

bash "$HERE/up.sh"
# The local stack's own tools (the runner's AWS semantics, the fault proxy), against fakes.
(cd "$REPO" && "$RULESTREAM_PY" -m unittest -q localstack.tests.test_runner localstack.tests.test_faultproxy)
"$RULESTREAM_PY" "$REPO/functions/rules/risk/test_app.py" -q

# The example `http` master rule in Python (functions/rules/risk), for the catalog rules the tests
# add (their `url`).
RISK_PORT="${RULESTREAM_RULE_RISK_PORT:-9181}"
export RULESTREAM_RULE_RISK_URL="http://127.0.0.1:$RISK_PORT/risk"
stop_pidfile rule-risk app.py e2e
(cd "$REPO" && exec setsid "$RULESTREAM_PY" "$REPO/functions/rules/risk/app.py" --listen "127.0.0.1:$RISK_PORT" \
  >"$S/rule-risk.log" 2>&1 </dev/null) &
echo $! >"$S/rule-risk.pid"
"$RULESTREAM_PY" "$HERE/provision.py"
"$RULESTREAM_PY" "$HERE/seed.py" --extra-trigger-table "$RULESTREAM_PREFIX-trigger-dup"
# The fault-injecting proxy (localstack/faultproxy.py) in front of LocalStack: the functions reach
# DynamoDB, S3, STS and Secrets Manager through it, so tests see which calls they made and can
# inject throttling and AccessDenied (LocalStack does neither). The tests' own clients go straight
# to LocalStack; they reach the proxy's control API at RULESTREAM_FAULTPROXY_URL.
FP_PORT="${RULESTREAM_FAULTPROXY_PORT:-4577}"
export RULESTREAM_FAULTPROXY_URL="http://127.0.0.1:$FP_PORT"
export RULESTREAM_FAULTPROXY_LOG="$S/faultproxy-calls.jsonl"
: >"$RULESTREAM_FAULTPROXY_LOG"
stop_pidfile faultproxy faultproxy.py e2e
(cd "$REPO" && exec setsid "$RULESTREAM_PY" "$HERE/faultproxy.py" --listen "127.0.0.1:$FP_PORT" \
  --upstream "$AWS_ENDPOINT_URL" --log "$RULESTREAM_FAULTPROXY_LOG" --seed 7 \
  >"$S/faultproxy.log" 2>&1 </dev/null) &
echo $! >"$S/faultproxy.pid"
for _ in $(seq 1 50); do
  curl -sf "$RULESTREAM_FAULTPROXY_URL/__faults" >/dev/null && break
  sleep 0.1
done
curl -sf "$RULESTREAM_FAULTPROXY_URL/__faults" >/dev/null || { echo "e2e: the fault proxy did not start" >&2; exit 1; }
AWS_ENDPOINT_URL_DYNAMODB="$RULESTREAM_FAULTPROXY_URL" AWS_ENDPOINT_URL_S3="$RULESTREAM_FAULTPROXY_URL" \
  AWS_ENDPOINT_URL_STS="$RULESTREAM_FAULTPROXY_URL" AWS_ENDPOINT_URL_SECRETS_MANAGER="$RULESTREAM_FAULTPROXY_URL" \
  RULESTREAM_LAMBDA_CONCURRENCY="${RULESTREAM_LAMBDA_CONCURRENCY:-4}" bash "$HERE/lambda.sh" start

: >"$S/runner-e2e.log"
: >"$S/runner-e2e-dup.log"
bash "$HERE/runners.sh" start runner-e2e "$RULESTREAM_PREFIX-trigger"
bash "$HERE/runners.sh" start runner-e2e-dup "$RULESTREAM_PREFIX-trigger-dup" --duplicate
# The MSK event source of the release bridge: <prefix>.releases on tansu.
(cd "$REPO" && exec setsid "$RULESTREAM_PY" -u "$HERE/kafka_runner.py" --topic "$RULESTREAM_PREFIX.releases" \
  --function release-bridge >"$S/kafka-runner-e2e.log" 2>&1 </dev/null) &
echo $! >"$S/kafka-runner-e2e.pid"

# The local EventBridge schedule of the sweeper.
if [[ -d "$REPO/functions/sweeper" ]]; then
  (cd "$REPO" && exec setsid "$RULESTREAM_PY" "$HERE/scheduler.py" --function sweeper \
    >"$S/scheduler-e2e.log" 2>&1 </dev/null) &
  echo $! >"$S/scheduler-e2e.pid"
else
  echo "e2e: no functions/sweeper: the scheduler is not started"
fi

cd "$REPO"
# One test at a time. Each test puts its executions through the one local stack, and several
# test deadlines (a sync-API wait, the quota's 2 s look, the stall bound). On 2 cores the stack
# serves about 50 hops/s (BENCHMARKS.md, "Under load"); two heavy tests at once slowed each
# other's chains past those deadlines (a start-and-wait of 20 s answered 202, a burst of starts
# saw no 429, executions ended by the stall bound). Serial, the suite takes about 7 minutes.
if [[ -n "${RULESTREAM_E2E_FILTER:-}" ]]; then
  # One part of the suite (e.g. `make chaos`: binary(chaos)), output shown.
  cargo nextest run -p rulestream-e2e --no-fail-fast --no-capture --test-threads 1 \
    -E "$RULESTREAM_E2E_FILTER"
elif cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p rulestream-e2e --no-fail-fast --test-threads 1 -E 'not binary(redis_down)'
  cargo nextest run -p rulestream-e2e --no-fail-fast --test-threads 1 -E 'binary(redis_down)'
else
  # Without nextest: every test binary, one test at a time, redis_down (which stops Redis) last.
  targets=()
  for f in localstack/e2e/tests/*.rs; do
    name="$(basename "$f" .rs)"
    [[ "$name" == redis_down ]] || targets+=(--test "$name")
  done
  cargo test -p rulestream-e2e --no-fail-fast "${targets[@]}" -- --test-threads 1
  cargo test -p rulestream-e2e --no-fail-fast --test redis_down -- --test-threads 1
fi
