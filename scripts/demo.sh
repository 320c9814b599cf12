#!/usr/bin/env bash
# `make demo`: the whole local stack, the real orchestrator, and every sample example through it.
#
#   bash scripts/demo.sh [demo.py options, e.g. --timeout 300 --only acme-bank]
#
# 1. localstack/up.sh          LocalStack (DynamoDB+Streams, S3, Secrets Manager, STS, IAM, SQS), Redis, tansu
# 2. localstack/provision.py   tables, bucket and on-failure queue of $RULESTREAM_PREFIX (default rulestream)
# 3. localstack/seed.py        flows to S3, clients items, catalog, acme-bank's secret and role,
#                              the state key (created once)
# 4. localstack/lambda.sh      `cargo lambda watch` serving the function binaries (first run compiles)
# 5. localstack/runner.py      the stream of <prefix>-trigger -> orchestrator with the mapping settings
#                              of template.yaml (background; pidfile localstack/.state/runner.pid, log
#                              .state/runner.log; given-up batches go to the SQS queue
#                              <prefix>-orchestrator-dlq and .state/runner-failures.jsonl); kept if
#                              already running for that table
#    localstack/kafka_runner.py  the topic <prefix>.releases (tansu) -> release-bridge, as MSK's event
#                              source delivers it (background; .state/kafka-runner.pid, .log)
#    localstack/scheduler.py   invokes the sweeper every RULESTREAM_SWEEP_INTERVAL_SECS (default 60;
#                              background; .state/scheduler.pid, .state/scheduler.log); kept if
#                              already running; only when functions/sweeper exists
# 6. localstack/demo.py        starts one execution per example, waits, prints the table; its exit
#                              status is this script's
# Everything keeps running afterwards (inspect, re-run); `make down` (bash localstack/down.sh) stops it.
# Everything listens on and talks to 127.0.0.1 only.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
bash localstack/up.sh
source localstack/env.sh
source localstack/procs.sh
S="$RULESTREAM_STATE"

"$RULESTREAM_PY" localstack/provision.py
"$RULESTREAM_PY" localstack/seed.py
bash localstack/lambda.sh start

# --- the local event source mapping for <prefix>-trigger --------------------------------------------
TABLE="$RULESTREAM_PREFIX-trigger"
if alive_as runner runner.py; then
  if [[ "$(tr '\0' ' ' <"/proc/$(pid_of runner)/cmdline")" == *"--table $TABLE "* ]]; then
    echo "demo: runner already running for $TABLE (pid $(pid_of runner))"
  else
    stop_pidfile runner runner.py demo  # it feeds another prefix's table
  fi
fi
if ! alive_as runner runner.py; then
  echo "demo: starting runner for $TABLE (log $S/runner.log)"
  (exec setsid nohup "$RULESTREAM_PY" -u localstack/runner.py --table "$TABLE" \
      --template template.yaml --function-logical-id OrchestratorFunction \
      --function orchestrator --lambda-url "http://127.0.0.1:$RULESTREAM_LAMBDA_PORT" \
      --parallelization-factor "$RULESTREAM_PARALLELIZATION_FACTOR" \
      --failures-file "$S/runner-failures.jsonl" >"$S/runner.log" 2>&1 </dev/null) &
  echo $! >"$S/runner.pid"
  sleep 1
  alive_as runner runner.py || { echo "demo: ERROR: runner exited:" >&2; tail -n 20 "$S/runner.log" >&2; exit 1; }
fi

# --- the local MSK event source of the release bridge: <prefix>.releases ----------------------------
# Started afresh (it replays the topic from its start: the bridge applies each message once).
stop_pidfile kafka-runner kafka_runner.py demo
echo "demo: starting the releases runner for $RULESTREAM_PREFIX.releases (log $S/kafka-runner.log)"
(exec setsid nohup "$RULESTREAM_PY" -u localstack/kafka_runner.py --topic "$RULESTREAM_PREFIX.releases" \
    --function release-bridge >"$S/kafka-runner.log" 2>&1 </dev/null) &
echo $! >"$S/kafka-runner.pid"

# --- the local EventBridge schedule of the sweeper ---------------------------------------------------
if [[ ! -d functions/sweeper ]]; then
  echo "demo: no functions/sweeper: the scheduler is not started"
elif alive_as scheduler scheduler.py; then
  echo "demo: scheduler already running (pid $(pid_of scheduler))"
else
  echo "demo: starting scheduler: sweeper every ${RULESTREAM_SWEEP_INTERVAL_SECS:-60}s (log $S/scheduler.log)"
  (exec setsid nohup "$RULESTREAM_PY" -u localstack/scheduler.py --function sweeper \
      >"$S/scheduler.log" 2>&1 </dev/null) &
  echo $! >"$S/scheduler.pid"
fi

rc=0
"$RULESTREAM_PY" localstack/demo.py "$@" || rc=$?
cat <<EOF

demo: the stack keeps running. Logs: $S/{localstack,lambda,runner,kafka-runner,scheduler}.log
demo: stop everything with: make down   (same as: bash localstack/down.sh)
EOF
exit "$rc"
