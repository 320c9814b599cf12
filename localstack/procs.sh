# Process helpers shared by localstack/*.sh (sourced after env.sh). Every process is found through
# its pidfile in $RULESTREAM_STATE and checked against a command-line pattern, so a stale pidfile
# never leads to signalling an unrelated process.

# pid_of NAME: the pid in $RULESTREAM_STATE/NAME.pid (empty if none)
pid_of() { tr -dc 0-9 2>/dev/null <"$RULESTREAM_STATE/$1.pid" || true; }

# alive_as NAME PATTERN: true if NAME.pid names a live process whose command line contains PATTERN
alive_as() {
  local p; p="$(pid_of "$1")"
  [[ -n "$p" ]] && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")" == *"$2"* ]]
}

# port_open PORT: something accepts TCP on 127.0.0.1:PORT
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# descendants PID: all live child processes, recursively (LocalStack puts its DynamoDB Local JVM in
# a process group of its own, so a group signal alone does not reach it).
descendants() { local c; for c in $(pgrep -P "$1" || true); do echo "$c"; descendants "$c"; done; }
any_alive() { local p; for p in "$@"; do kill -0 -- "$p" 2>/dev/null && return 0; done; return 1; }

# stop_pidfile NAME PATTERN [LABEL]: if NAME.pid names a live process whose command line contains
# PATTERN, SIGTERM it (its whole process group when it leads one: setsid-started processes), wait
# up to 15 s for it and its descendants (taken before the SIGTERM) to exit, then SIGKILL whatever is
# left. Removes the pidfile in any case.
stop_pidfile() {
  local f="$RULESTREAM_STATE/$1.pid" pid target kids k
  [[ -f "$f" ]] || return 0
  pid="$(pid_of "$1")"
  if [[ -n "$pid" ]] && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$2"* ]]; then
    target="$pid"
    [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]] && target="-$pid"
    kids="$(descendants "$pid")"
    echo "${3:-stop}: stopping $1 (pid $pid${kids:+, children $(echo $kids)})"
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 150); do any_alive "$target" $kids || break; sleep 0.1; done
    for k in "$target" $kids; do kill -KILL -- "$k" 2>/dev/null || true; done
  fi
  rm -f "$f"
}
