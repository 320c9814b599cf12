#!/usr/bin/env bash
# Chain figures on the local stack (BENCHMARKS.md): brings the stack up like `make demo`, runs
# localstack/bench_hops.py (hops) and localstack/bench_releases.py (release latency, bridge
# throughput, lambda/http rule steps), and leaves the stack running (`make down` stops it).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
source "$REPO/localstack/env.sh"
bash "$REPO/localstack/up.sh"
"$RULESTREAM_PY" "$REPO/localstack/provision.py"
"$RULESTREAM_PY" "$REPO/localstack/seed.py"
bash "$REPO/localstack/lambda.sh" start
source "$REPO/localstack/procs.sh"
"$RULESTREAM_PY" "$REPO/localstack/bench_hops.py" "$@"
# The bench runs its own consumer of the releases topic: a demo's one would share the messages.
stop_pidfile kafka-runner kafka_runner.py bench
"$RULESTREAM_PY" "$REPO/localstack/bench_releases.py"
# Write units per hop at step 5 and step 50 with a 1 KB input (the cost model of BENCHMARKS.md).
"$RULESTREAM_PY" "$REPO/localstack/bench_cost.py" --rules 50 --input-bytes 1024
