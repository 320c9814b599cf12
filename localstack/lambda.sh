#!/usr/bin/env bash
# Runs the function binaries locally under `cargo lambda watch` (Lambda Runtime API + Invoke API on
# 127.0.0.1:$RULESTREAM_LAMBDA_PORT); localstack/runner.py feeds them stream batches.
#
#   bash localstack/lambda.sh start    start (unless running), wait until the orchestrator answers
#   bash localstack/lambda.sh stop     stop it (by pidfile; down.sh does this too)
#   bash localstack/lambda.sh status
#
# Invoke a function: POST http://127.0.0.1:$RULESTREAM_LAMBDA_PORT/2015-03-31/functions/<bin>/invocations
# (<bin> = binary name, e.g. orchestrator). Log: localstack/.state/lambda.log; pid: .state/lambda.pid.
#
# Environment of the functions: cargo-lambda starts each function (`cargo run --bin <bin>`) with the
# environment of `cargo lambda watch` plus its --env-file/--env-var values plus
# AWS_LAMBDA_FUNCTION_NAME/AWS_LAMBDA_RUNTIME_API/... . We do both: export everything env.sh sets
# and write it to .state/lambda.env, passed with --env-file, so the functions see AWS_ENDPOINT_URL,
# the dummy credentials, AWS_REGION, RULESTREAM_PREFIX, REDIS_URL (rediss://, with the AUTH token),
# REDIS_CA_FILE (the local CA that signed Redis's certificate), KAFKA_BROKERS and RUST_LOG=info.
#
# `cargo lambda watch` binds the invoke port at once and compiles a function lazily, on its first
# invocation. So `start` waits for the port, then sends the orchestrator one empty batch
# ({"Records": []}) and waits for its answer: the first start compiles (deadline
# RULESTREAM_LAMBDA_TIMEOUT, default 600 s). When functions/sweeper exists, the sweeper then gets
# one EventBridge scheduled event (localstack/scheduler.py --print-event) the same way: it runs
# one real sweep of $RULESTREAM_PREFIX's tables. RULESTREAM_LAMBDA_WARMUP=0 skips both invocations.
# localstack/scheduler.py invokes the sweeper on its schedule afterwards (e2e.sh and
# scripts/demo.sh start it).
#
# Knobs: RULESTREAM_LAMBDA_RELOAD=1 recompiles and restarts a function when sources change (the
# default, --ignore-changes, keeps a demo stable while someone edits code); RULESTREAM_LAMBDA_RELEASE=1
# builds with --release; RULESTREAM_LAMBDA_CONCURRENCY=N instances per function (cargo-lambda's
# default is 1). CARGO_TARGET_DIR defaults to the Makefile's ($HOME/.cache/rulestream/target) so the
# functions reuse `make`'s build.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
source "$HERE/env.sh"
source "$HERE/procs.sh"

S="$RULESTREAM_STATE"
LOG="$S/lambda.log"
ENV_FILE="$S/lambda.env"
PORT="$RULESTREAM_LAMBDA_PORT"
DEADLINE_S="${RULESTREAM_LAMBDA_TIMEOUT:-600}"
PATTERN="lambda watch"  # how the pidfile's process is recognised (cargo lambda watch / cargo-lambda lambda watch)
say() { echo "lambda: $*"; }
fail() {
  echo "lambda: ERROR: $*" >&2
  [[ -f "$LOG" ]] && { echo "---- tail of $LOG ----" >&2; tail -n 40 "$LOG" >&2; }
  echo "lambda: (if it still runs: bash localstack/lambda.sh stop)" >&2
  exit 1
}
# compile_failed: cargo reported a build error, or the function process died (cargo-lambda then
# waits for a source change and the invocation would hang until the deadline).
# Only the log written after byte $LOG_MARK is read (an earlier, since fixed error does not count).
LOG_MARK=0
compile_failed() {
  tail -c +"$((LOG_MARK + 1))" "$LOG" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' \
    | grep -E -m1 '^error(\[E[0-9]+\])?:|command exited|failed to obtain the watchexec task'
}

start() {
  mkdir -p "$S"
  command -v cargo >/dev/null || fail "cargo is not on PATH"
  command -v cargo-lambda >/dev/null || fail "cargo-lambda is not on PATH (run localstack/install.sh)"
  if alive_as lambda "$PATTERN"; then
    say "already running (pid $(pid_of lambda))"
  else
    port_open "$PORT" && fail "127.0.0.1:$PORT is taken by a process not started by lambda.sh"
    export RUST_LOG=info
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/rulestream/target}"
    # The functions' environment (see the header). Values from env.sh never contain spaces/quotes.
    {
      for v in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION \
               AWS_EC2_METADATA_DISABLED AWS_ENDPOINT_URL RULESTREAM_PREFIX REDIS_URL REDIS_CA_FILE \
               KAFKA_BROKERS RUST_LOG; do
        echo "$v=${!v}"
      done
      # Per-service endpoint overrides (AWS_ENDPOINT_URL_DYNAMODB...) and every other RULESTREAM_*
      # setting (RULESTREAM_TRIGGER_TTL_DAYS, RULESTREAM_CONFIG_TTL_SECS...) the caller exported.
      env | grep -E '^(AWS_ENDPOINT_URL_[A-Z0-9_]+|RULESTREAM_[A-Z0-9_]+)=' | grep -vE '^RULESTREAM_(PREFIX|E2E_FILTER|CHAOS_[A-Z_]+)=' || true
    } >"$ENV_FILE"
    args=(--invoke-address 127.0.0.1 --invoke-port "$PORT" --env-file "$ENV_FILE")
    [[ "${RULESTREAM_LAMBDA_RELOAD:-0}" == 1 ]] || args+=(--ignore-changes)
    [[ "${RULESTREAM_LAMBDA_RELEASE:-0}" == 1 ]] && args+=(--release)
    [[ -n "${RULESTREAM_LAMBDA_CONCURRENCY:-}" ]] && args+=(--concurrency "$RULESTREAM_LAMBDA_CONCURRENCY")
    say "starting cargo lambda watch on 127.0.0.1:$PORT (log $LOG; CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    # setsid: own process group, so stop/down.sh also reach cargo and the function processes.
    (cd "$REPO" && exec setsid nohup cargo lambda watch "${args[@]}" >"$LOG" 2>&1 </dev/null) &
    echo $! >"$S/lambda.pid"
  fi

  local end=$((SECONDS + DEADLINE_S))
  until port_open "$PORT"; do
    # kill -0, not the command-line check: right after the start the pid may still be the
    # subshell on its way to exec cargo, whose command line does not say "lambda watch" yet.
    kill -0 "$(pid_of lambda)" 2>/dev/null || fail "cargo lambda watch exited"
    ((SECONDS < end)) || fail "port $PORT not open after ${DEADLINE_S}s"
    sleep 0.5
  done
  say "invoke API listening on 127.0.0.1:$PORT (pid $(pid_of lambda))"

  [[ "${RULESTREAM_LAMBDA_WARMUP:-1}" == 0 ]] && { say "ready (warm-up skipped)"; return 0; }
  # Warm-up: one empty stream batch to the orchestrator; the first one compiles it.
  warm orchestrator '{"Records": []}'
  if [[ -d "$REPO/functions/sweeper" ]]; then
    local py="$RULESTREAM_PY"
    [[ -x "$py" ]] || py=python3  # scheduler.py needs only the standard library
    warm sweeper "$("$py" "$HERE/scheduler.py" --print-event)"
  else
    say "no functions/sweeper: sweeper warm-up skipped"
  fi
  if [[ -d "$REPO/functions/release-bridge" ]]; then
    warm release-bridge '{"eventSource":"aws:kafka","eventSourceArn":"arn:aws:kafka:us-east-1:000000000000:cluster/rulestream-local/local","bootstrapServers":"127.0.0.1","records":{}}'
  fi
  if [[ -d "$REPO/functions/rules/score" ]]; then
    # The example Rust `lambda` master rule: its first start compiles it, which can take longer
    # than a rule's 10 s timeout, so it is started here rather than by the first flow that uses it.
    warm rulestream-rule-score '{"input": {"amount": 1}, "ctx": {}, "params": {"threshold": 1}, "execution": {}}'
  fi
  if [[ -d "$REPO/functions/sync-api" ]]; then
    # An API Gateway HTTP API (payload v2) request, as the function receives it.
    warm sync-api '{"version":"2.0","routeKey":"GET /v1/health","rawPath":"/v1/health","rawQueryString":"","headers":{},"requestContext":{"http":{"method":"GET","path":"/v1/health","protocol":"HTTP/1.1","sourceIp":"127.0.0.1","userAgent":"warm-up"},"routeKey":"GET /v1/health","stage":"$default","requestId":"warm-up","accountId":"000000000000","apiId":"local","domainName":"localhost","domainPrefix":"localhost","time":"30/Nov/2026:00:00:00 +0000","timeEpoch":0},"isBase64Encoded":false}'
  fi
}

# warm FUNCTION PAYLOAD: invokes FUNCTION once and waits for its answer (the first invocation
# compiles it; deadline $DEADLINE_S seconds); fails on a build error, a dead `cargo lambda watch`,
# a non-2xx answer or a function error.
warm() {
  local fn="$1" payload="$2"
  local url="http://127.0.0.1:$PORT/2015-03-31/functions/$fn/invocations"
  local out="$S/lambda.warmup.$fn" t0=$SECONDS code cpid body
  local end=$((SECONDS + DEADLINE_S))
  say "warm-up invocation of $fn (the first start compiles it; deadline ${DEADLINE_S}s)"
  rm -f "$out"
  # shellcheck disable=SC2064  # the paths are fixed now, on purpose
  trap "rm -f '$out' '$out.code'" EXIT
  LOG_MARK="$(stat -c %s "$LOG" 2>/dev/null || echo 0)"
  curl -s --noproxy '*' -o "$out" -w '%{http_code}' --max-time "$DEADLINE_S" \
    -H 'Content-Type: application/json' -d "$payload" "$url" >"$out.code" 2>/dev/null &
  cpid=$!
  while kill -0 "$cpid" 2>/dev/null; do
    if ! alive_as lambda "$PATTERN"; then kill "$cpid" 2>/dev/null || true; fail "cargo lambda watch exited"; fi
    if compile_failed >/dev/null; then
      kill "$cpid" 2>/dev/null || true
      fail "$fn did not build or start: $(compile_failed)"
    fi
    ((SECONDS < end)) || { kill "$cpid" 2>/dev/null || true; fail "no answer from $fn after ${DEADLINE_S}s"; }
    sleep 1
  done
  wait "$cpid" || true
  code="$(cat "$out.code" 2>/dev/null || true)"
  body="$(head -c 400 "$out" 2>/dev/null || true)"
  rm -f "$out" "$out.code"
  if [[ "$code" != 2* ]] || [[ "$body" == *errorType* ]]; then
    fail "warm-up invocation of $fn answered HTTP ${code:-none}: $body"
  fi
  say "$fn ready after $((SECONDS - t0))s: $body"
}

stop() {
  if [[ -f "$S/lambda.pid" ]]; then
    stop_pidfile lambda "$PATTERN" lambda
  else
    say "not running"
  fi
}

status() {
  if alive_as lambda "$PATTERN"; then
    say "running (pid $(pid_of lambda)); port $PORT $(port_open "$PORT" && echo open || echo closed)"
  else
    say "not running"; return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
