#!/usr/bin/env bash
# Stops, by the PIDs in $RULESTREAM_STATE (localstack/.state/), what up.sh started, plus a
# `cargo lambda watch` whose pid is in lambda.pid. Removes the pidfiles. Fine if nothing runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
S="$RULESTREAM_STATE"

# stop NAME PATTERN: if NAME.pid names a live process whose command line contains PATTERN (so a
# stale pidfile never hits an unrelated process), SIGTERM it, or its whole process group when it leads
# one (setsid-started: LocalStack's DynamoDB Local JVM, cargo's children); wait 15 s, then SIGKILL.
stop() {
  local f="$S/$1.pid" pid target
  [[ -f "$f" ]] || return 0
  pid="$(tr -dc 0-9 <"$f")"
  if [[ -n "$pid" ]] && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$2"* ]]; then
    target="$pid"
    [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] && target="-$pid"
    echo "down: stopping $1 (pid $pid)"
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 -- "$target" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "$target" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop lambda lambda
stop localstack localstack.runtime.main
stop tansu tansu
stop redis redis-server
echo "down: stopped"
