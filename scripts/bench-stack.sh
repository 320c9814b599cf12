#!/usr/bin/env bash
# Chain figures on the local stack (BENCHMARKS.md): brings the stack up like `make demo`, then
#
#   bash scripts/bench-stack.sh [ARGS]        (make bench-stack) localstack/bench_hops.py ARGS (the
#       hop, its floor), localstack/bench_releases.py (release latency, bridge throughput,
#       lambda/http rule steps) and localstack/bench_cost.py (write units per hop);
#   bash scripts/bench-stack.sh load [ARGS]   (make bench-load) localstack/bench_load.py ARGS (the
#       chain under load).
#
# It leaves the stack running (`make down` stops it). RULESTREAM_LAMBDA_RELEASE=1 serves release
# builds.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
source "$REPO/localstack/env.sh"
bash "$REPO/localstack/up.sh"
"$RULESTREAM_PY" "$REPO/localstack/provision.py"
"$RULESTREAM_PY" "$REPO/localstack/seed.py"
bash "$REPO/localstack/lambda.sh" start
if [[ "${1:-}" == load ]]; then
  shift
  exec "$RULESTREAM_PY" "$REPO/localstack/bench_load.py" "$@"
fi
source "$REPO/localstack/procs.sh"
"$RULESTREAM_PY" "$REPO/localstack/bench_hops.py" "$@"
# The bench runs its own consumer of the releases topic: a demo's one would share the messages.
stop_pidfile kafka-runner kafka_runner.py bench
"$RULESTREAM_PY" "$REPO/localstack/bench_releases.py"
# Write units per hop at step 5 and step 50 with a 1 KB input (the cost model of BENCHMARKS.md).
"$RULESTREAM_PY" "$REPO/localstack/bench_cost.py" --rules 50 --input-bytes 1024
