# shellcheck shell=bash
# Process helpers shared by localstack/*.sh and scripts/*.sh (sourced after env.sh; a developer's
# shell may source both). Every process is found through its pidfile in $RULESTREAM_STATE and
# checked against a command-line pattern, so a stale pidfile never leads to signalling an unrelated
# process.

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

# rs_redis_cli ARGS...: redis-cli against the local Redis: TLS, the server certificate verified
# against $REDIS_CA_FILE, AUTH with $RULESTREAM_REDIS_TOKEN (through REDISCLI_AUTH, so the token is
# not on a command line). E.g. `rs_redis_cli ping`, `rs_redis_cli --scan`.
rs_redis_cli() {
  REDISCLI_AUTH="$RULESTREAM_REDIS_TOKEN" redis-cli --tls --cacert "$REDIS_CA_FILE" \
    -h 127.0.0.1 -p "$RULESTREAM_REDIS_PORT" "$@"
}

# rs_redis_ping: true if the local Redis answers PONG over TLS with the token within 5 s (a
# plain-text Redis never answers a TLS handshake: without the bound, redis-cli would wait forever).
rs_redis_ping() {
  local out
  out="$(REDISCLI_AUTH="$RULESTREAM_REDIS_TOKEN" timeout 5 redis-cli --tls --cacert "$REDIS_CA_FILE" \
    -h 127.0.0.1 -p "$RULESTREAM_REDIS_PORT" ping 2>/dev/null)" || true
  [[ "$out" == PONG ]]
}

# rs_redis_tls DIR: makes sure DIR holds ca.pem, redis.crt and redis.key: a local CA and a server
# certificate for 127.0.0.1 / localhost signed by it (ECDSA P-256, SHA-256; the extensions strict
# verifiers such as rustls/webpki want). Kept when present, matching and valid for 7 more days;
# otherwise all three are generated again (a running Redis must then be restarted: up.sh does).
# The CA's private key is deleted once the server certificate is signed.
rs_redis_tls() {
  local dir="$1" tmp
  if [[ -s "$dir/ca.pem" && -s "$dir/redis.crt" && -s "$dir/redis.key" ]] \
    && openssl verify -CAfile "$dir/ca.pem" "$dir/redis.crt" >/dev/null 2>&1 \
    && openssl x509 -noout -checkend 604800 -in "$dir/ca.pem" >/dev/null 2>&1 \
    && openssl x509 -noout -checkend 604800 -in "$dir/redis.crt" >/dev/null 2>&1 \
    && [[ "$(openssl x509 -noout -pubkey -in "$dir/redis.crt" 2>/dev/null)" \
          == "$(openssl pkey -pubout -in "$dir/redis.key" 2>/dev/null)" ]]; then
    return 0
  fi
  command -v openssl >/dev/null || { echo "rs_redis_tls: openssl is not installed" >&2; return 1; }
  mkdir -p "$dir"
  tmp="$(mktemp -d "$dir/.new.XXXXXX")"
  (
    set -e
    umask 077
    cd "$tmp"
    cat >ca.cnf <<'CNF'
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = rulestream local Redis CA
[ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
    cat >server.ext <<'CNF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
    openssl req -x509 -config ca.cnf -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -sha256 -days 3650 -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=localhost" -keyout redis.key -out redis.csr 2>/dev/null
    openssl x509 -req -in redis.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
      -sha256 -days 825 -extfile server.ext -out redis.crt 2>/dev/null
    openssl verify -CAfile ca.pem redis.crt >/dev/null
    chmod 644 ca.pem redis.crt
  ) || { rm -rf "$tmp"; echo "rs_redis_tls: openssl failed to generate the certificates" >&2; return 1; }
  mv -f "$tmp/redis.key" "$dir/redis.key"
  mv -f "$tmp/redis.crt" "$dir/redis.crt"
  mv -f "$tmp/ca.pem" "$dir/ca.pem"
  rm -rf "$tmp"
  echo "rs_redis_tls: generated a CA and a server certificate for 127.0.0.1/localhost in $dir"
}
