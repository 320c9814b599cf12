#!/usr/bin/env bash
# Stops, by the PIDs in $RULESTREAM_STATE (localstack/.state/), what up.sh started, plus a
# `cargo lambda watch` whose pid is in lambda.pid. Removes the pidfiles. Fine if nothing runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
S="$RULESTREAM_STATE"

# descendants PID: all live child processes, recursively (LocalStack puts its DynamoDB Local JVM in
# a process group of its own, so a group signal alone does not reach it).
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
any_alive() { local p; for p in "$@"; do kill -0 -- "$p" 2>/dev/null && return 0; done; return 1; }

# stop NAME PATTERN: if NAME.pid names a live process whose command line contains PATTERN (so a
# stale pidfile never hits an unrelated process), SIGTERM it, or its whole process group when it leads
# one (setsid-started ones: cargo's children...); wait up to 15 s for it and its descendants (taken
# before the SIGTERM) to exit, then SIGKILL whatever is left.
stop() {
  local f="$S/$1.pid" pid target kids
  [[ -f "$f" ]] || return 0
  pid="$(tr -dc 0-9 <"$f")"
  if [[ -n "$pid" ]] && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$2"* ]]; then
    target="$pid"
    [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] && target="-$pid"
    kids="$(descendants "$pid")"
    echo "down: stopping $1 (pid $pid${kids:+, children $(echo $kids)})"
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 150); do any_alive "$target" $kids || break; sleep 0.1; done
    for k in "$target" $kids; do kill -KILL -- "$k" 2>/dev/null || true; done
  fi
  rm -f "$f"
}

stop lambda lambda
stop localstack localstack.runtime.main
stop tansu tansu
stop redis redis-server
echo "down: stopped"
