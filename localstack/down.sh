#!/usr/bin/env bash
# Stops, by the PIDs in $RULESTREAM_STATE (localstack/.state/), what up.sh started, plus what
# scripts/demo.sh, localstack/e2e.sh and localstack/lambda.sh started: the sweeper's schedulers
# (scheduler*.pid), stream runners (runner*.pid), the releases topic's runners
# (kafka-runner*.pid) and `cargo lambda watch` (lambda.pid). Removes
# the pidfiles. Fine if nothing runs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/env.sh"
source "$HERE/procs.sh"
S="$RULESTREAM_STATE"

# Feeders first (scheduler.py: the sweeper's schedule; runner.py: the local event source
# mappings), then the functions, then the stack.
shopt -s nullglob
for f in "$S"/scheduler*.pid; do
  stop_pidfile "$(basename "$f" .pid)" scheduler.py down
done
for f in "$S"/runner*.pid; do
  stop_pidfile "$(basename "$f" .pid)" runner.py down
done
for f in "$S"/kafka-runner*.pid; do
  stop_pidfile "$(basename "$f" .pid)" kafka_runner.py down
done
shopt -u nullglob
stop_pidfile lambda lambda down
stop_pidfile localstack localstack.runtime.main down
stop_pidfile tansu tansu down
stop_pidfile redis redis-server down
echo "down: stopped"
