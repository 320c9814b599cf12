#!/usr/bin/env bash
# Starts the local stack on 127.0.0.1: LocalStack (DynamoDB + Streams, S3, Secrets Manager, STS, IAM,
# SQS for the orchestrator's on-failure queue), redis-server and the tansu Kafka broker. Each is
# started only if its pidfile does not name a live process; then all are checked for readiness,
# including a real DynamoDB CreateTable/DeleteTable and that LocalStack has every service enabled.
# Stop with localstack/down.sh. Pidfiles and logs: $RULESTREAM_STATE (localstack/.state/).
#
# Redis listens with TLS only (no plain-text port) and requires AUTH with $RULESTREAM_REDIS_TOKEN,
# like ElastiCache with transit encryption and an AUTH token. Its CA, certificate and key are
# generated once into $RULESTREAM_STATE/tls/ (ca.pem = $REDIS_CA_FILE, redis.crt, redis.key); a
# Redis already running that does not answer over TLS with that CA and token (started by an older
# up.sh, or before the certificates were renewed) is restarted.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$HERE/install.sh"
source "$HERE/env.sh"
source "$HERE/procs.sh"

S="$RULESTREAM_STATE"
mkdir -p "$S"
DEADLINE_S="${RULESTREAM_UP_TIMEOUT:-120}"
say() { echo "up: $*"; }
fail() { # fail NAME LOG MESSAGE: print the log's tail and exit
  echo "up: ERROR: $1: $3" >&2
  [[ -f "$2" ]] && { echo "---- tail of $2 ----" >&2; tail -n 40 "$2" >&2; }
  echo "up: (what did start keeps running: localstack/down.sh stops it)" >&2
  exit 1
}
# running NAME: true if $S/NAME.pid names a live process whose command line mentions it
running() {
  local p; p="$(tr -dc 0-9 2>/dev/null <"$S/$1.pid" || true)"
  [[ -n "$p" ]] && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline")" == *"${PATTERN[$1]}"* ]]
}
declare -A PATTERN=([localstack]=localstack.runtime.main [redis]=redis-server [tansu]=tansu)
# wait_for NAME LOG CMD...: poll CMD until it succeeds, the process dies, or the deadline passes
wait_for() {
  local name="$1" log="$2"; shift 2
  local end=$((SECONDS + DEADLINE_S))
  until "$@" >/dev/null 2>&1; do
    running "$name" || fail "$name" "$log" "process exited"
    ((SECONDS < end)) || fail "$name" "$log" "not ready after ${DEADLINE_S}s"
    sleep 0.5
  done
}
# guard_port NAME PORT: refuse to start if something else already listens there
guard_port() { ! port_open "$2" || fail "$1" /dev/null "127.0.0.1:$2 is taken by a process not started by up.sh"; }

# --- LocalStack in host mode (no Docker) ----------------------------------------------------------
if running localstack; then say "localstack already running (pid $(cat "$S/localstack.pid"))"; else
  guard_port localstack "$RULESTREAM_AWS_PORT"
  say "starting localstack on 127.0.0.1:$RULESTREAM_AWS_PORT"
  # GATEWAY_SERVER=hypercorn: the default server ignores the host part and binds 0.0.0.0.
  # DISABLE_EVENTS / SKIP_SSL_CERT_DOWNLOAD / DNS_ADDRESS=0: no analytics, no downloads, no DNS server.
  # LOCALSTACK_HOST: URLs LocalStack hands out point at 127.0.0.1, not *.localstack.cloud.
  # setsid: own process group, so down.sh also stops its DynamoDB Local JVM.
  env -u AWS_ENDPOINT_URL \
    GATEWAY_LISTEN="127.0.0.1:$RULESTREAM_AWS_PORT" GATEWAY_SERVER=hypercorn \
    LOCALSTACK_HOST="127.0.0.1:$RULESTREAM_AWS_PORT" \
    SERVICES=dynamodb,dynamodbstreams,s3,secretsmanager,sts,iam,sqs \
    PROVIDER_OVERRIDE_DYNAMODB=v2 PROVIDER_OVERRIDE_DYNAMODBSTREAMS=v2 \
    DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0 \
    setsid nohup "$RULESTREAM_PY" -m localstack.runtime.main >"$S/localstack.log" 2>&1 </dev/null &
  echo $! >"$S/localstack.pid"
fi

# --- redis-server: TLS only + AUTH (daemonizes itself and writes its own pidfile) ------------------
TLS="$S/tls"
rs_redis_tls "$TLS" || fail redis /dev/null "could not generate the TLS certificates in $TLS"
if running redis; then
  # Ours, but is it the TLS + AUTH one with today's certificates? (rs_redis_ping waits up to 5 s.)
  if ! rs_redis_ping; then
    say "redis (pid $(cat "$S/redis.pid")) does not answer over TLS with the local CA and token: restarting it"
    stop_pidfile redis redis-server up
  fi
fi
if running redis; then say "redis already running (pid $(cat "$S/redis.pid"))"; else
  guard_port redis "$RULESTREAM_REDIS_PORT"
  say "starting redis on 127.0.0.1:$RULESTREAM_REDIS_PORT (TLS only, AUTH)"
  rm -f "$S/redis.pid"
  # --port 0: no plain-text listener. --tls-auth-clients no: clients need no certificate of their
  # own (ElastiCache does not ask for one either); they verify the server's against ca.pem.
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$RULESTREAM_REDIS_PORT" \
    --tls-cert-file "$TLS/redis.crt" --tls-key-file "$TLS/redis.key" --tls-ca-cert-file "$TLS/ca.pem" \
    --tls-auth-clients no --requirepass "$RULESTREAM_REDIS_TOKEN" \
    --save '' --appendonly no \
    --daemonize yes --pidfile "$S/redis.pid" --logfile "$S/redis.log" --dir "$S" \
    || fail redis "$S/redis.log" "redis-server failed to start"
  for _ in $(seq 50); do [[ -s "$S/redis.pid" ]] && break; sleep 0.1; done
fi

# --- tansu, a Kafka-compatible broker (in-memory storage, auto-creates topics) --------------------
if running tansu; then say "tansu already running (pid $(cat "$S/tansu.pid"))"; else
  guard_port tansu "$RULESTREAM_KAFKA_PORT"
  say "starting tansu on 127.0.0.1:$RULESTREAM_KAFKA_PORT"
  # Flags beat tansu's env fallbacks (LISTENER_URL, STORAGE_ENGINE...); drop its OTLP exporter env.
  env -u OTEL_EXPORTER_OTLP_ENDPOINT setsid nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$RULESTREAM_KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$RULESTREAM_KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$S/tansu.log" 2>&1 </dev/null &
  echo $! >"$S/tansu.pid"
fi

# --- readiness --------------------------------------------------------------------------------------
wait_for redis "$S/redis.log" rs_redis_ping
say "redis ready (TLS, AUTH)"
wait_for tansu "$S/tansu.log" port_open "$RULESTREAM_KAFKA_PORT"
say "tansu ready"
wait_for localstack "$S/localstack.log" \
  curl -sf --noproxy '*' "http://127.0.0.1:$RULESTREAM_AWS_PORT/_localstack/health"
say "localstack ready"
# Every service the stack needs must be enabled: a LocalStack started by an older up.sh (SERVICES
# without sqs) reports sqs "disabled", and runner.py's on-failure queue would not exist.
curl -sf --noproxy '*' "http://127.0.0.1:$RULESTREAM_AWS_PORT/_localstack/health" | "$RULESTREAM_PY" -c '
import json, sys
services = json.load(sys.stdin).get("services", {})
off = [s for s in ("dynamodb", "dynamodbstreams", "s3", "secretsmanager", "sts", "iam", "sqs")
       if services.get(s, "disabled") == "disabled"]
sys.exit(f"up: services not enabled: {off}" if off else 0)' \
  || fail localstack /dev/null "LocalStack (pid $(cat "$S/localstack.pid" 2>/dev/null)) runs without a service this stack needs (started by an older up.sh?): run localstack/down.sh, then up.sh again"
# DynamoDB is where LocalStack breaks offline (it tries to download DynamoDB Local): prove it works.
# The first call starts the DynamoDB Local JVM.
"$RULESTREAM_PY" - "$DEADLINE_S" <<'EOF' || fail localstack "$S/localstack.log" "DynamoDB CreateTable/DeleteTable failed"
import sys, time, uuid, boto3
from botocore.config import Config
ddb = boto3.client("dynamodb", config=Config(retries={"max_attempts": 2}, read_timeout=int(sys.argv[1])))
name = f"up-check-{uuid.uuid4().hex[:8]}"
t0 = time.time()
ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                 AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                 KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                 StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
ddb.delete_table(TableName=name)
print(f"up: dynamodb ok (create+delete {time.time() - t0:.1f}s)")
EOF
say "all up: AWS $AWS_ENDPOINT_URL  redis ${REDIS_URL/:$RULESTREAM_REDIS_TOKEN@/:***@}  kafka $KAFKA_BROKERS"
