#!/usr/bin/env bash
# The e2e suite's event-source runners (localstack/runner.py with template.yaml's stream mapping
# of OrchestratorFunction), started, stopped and killed by name:
#
#   bash localstack/runners.sh start NAME TABLE [runner.py args...]   # e.g. --duplicate
#   bash localstack/runners.sh kill NAME        # SIGKILL mid-batch, as a crashed poller would die
#   bash localstack/runners.sh restart NAME TABLE [args...]   # kill, then start again
#
# A runner keeps its checkpoints in memory: started again, it re-reads its stream from
# TRIM_HORIZON and delivers every record once more (the orchestrator is idempotent; that is what
# `make chaos` checks). Logs: $RULESTREAM_STATE/NAME.log; given-up batches: NAME.failures.jsonl.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
source "$HERE/env.sh"
source "$HERE/procs.sh"
S="$RULESTREAM_STATE"

start() { # name table [args]
  local name=$1 table=$2
  shift 2
  (cd "$REPO" && exec setsid "$RULESTREAM_PY" "$HERE/runner.py" --table "$table" \
    --template "$REPO/template.yaml" --function-logical-id OrchestratorFunction \
    --parallelization-factor "$RULESTREAM_PARALLELIZATION_FACTOR" \
    --failures-file "$S/$name.failures.jsonl" "$@" >>"$S/$name.log" 2>&1 </dev/null) &
  echo $! >"$S/$name.pid"
}

kill_hard() { # name
  local pid
  pid="$(pid_of "$1")"
  if [[ -n "$pid" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q runner.py; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    echo "runners: killed $1 (pid $pid)"
  fi
}

case "${1:-}" in
  start) shift; start "$@" ;;
  kill) kill_hard "$2" ;;
  restart) shift; kill_hard "$1"; sleep 0.2; start "$@" ;;
  *) echo "usage: $0 start|kill|restart NAME [TABLE args...]" >&2; exit 2 ;;
esac
