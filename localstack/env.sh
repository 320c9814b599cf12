# shellcheck shell=bash
# Sourced by every localstack/ script (and by a developer's shell: `source localstack/env.sh`).
# Only sets variables; every value can be overridden from the environment beforehand.
# Everything points at 127.0.0.1; nothing here contacts the network.

RULESTREAM_LOCALSTACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export RULESTREAM_LOCALSTACK_DIR

# Tools live outside the repo so fresh clones and repeated runs reuse them.
export RULESTREAM_TOOLS="${RULESTREAM_TOOLS:-${HOME:-/root}/.cache/rulestream-tools}"
export RULESTREAM_VENV="${RULESTREAM_VENV:-$RULESTREAM_TOOLS/venv}"
export RULESTREAM_PY="$RULESTREAM_VENV/bin/python"        # python with boto3, kafka-python, localstack
export RULESTREAM_SAM_VENV="${RULESTREAM_SAM_VENV:-$RULESTREAM_TOOLS/sam-venv}"  # aws-sam-cli, cfn-lint
export RULESTREAM_STATE="${RULESTREAM_STATE:-$RULESTREAM_LOCALSTACK_DIR/.state}"  # pidfiles, logs
# LocalStack's own install folder (DynamoDB Local, Java); host mode uses /var/lib/localstack.
export RULESTREAM_LS_VAR="${RULESTREAM_LS_VAR:-/var/lib/localstack}"

# $RULESTREAM_TOOLS/bin holds tansu, cargo-lambda and zig (for `cargo lambda build`), sam and cfn-lint.
case ":$PATH:" in
  *":$RULESTREAM_TOOLS/bin:"*) ;;
  *) export PATH="$RULESTREAM_TOOLS/bin:$PATH" ;;
esac

# The `rulestream` CLI as `make demo` / `make test` build it (debug), so `rulestream …` works in a
# shell that sourced this file.
RULESTREAM_CLI_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/rulestream/target}/debug"
case ":$PATH:" in
  *":$RULESTREAM_CLI_DIR:"*) ;;
  *) export PATH="$RULESTREAM_CLI_DIR:$PATH" ;;
esac

# Ports (all on 127.0.0.1).
export RULESTREAM_AWS_PORT="${RULESTREAM_AWS_PORT:-4566}"      # LocalStack gateway
export RULESTREAM_REDIS_PORT="${RULESTREAM_REDIS_PORT:-6390}"  # redis-server
export RULESTREAM_KAFKA_PORT="${RULESTREAM_KAFKA_PORT:-19092}" # tansu broker
export RULESTREAM_LAMBDA_PORT="${RULESTREAM_LAMBDA_PORT:-9000}" # cargo lambda watch (Invoke API)
# Batches of one trigger-stream shard that runner.py delivers at a time (the demo's and the e2e
# suite's runners). template.yaml says 10, as on AWS, where each batch gets a function instance
# of its own; here the batches queue for the 1 to 4 instances `cargo lambda watch` runs on 2
# cores, which costs throughput and latency (BENCHMARKS.md, "Under load"), so the local default
# is 1. Set it to 10 to run the local stack with the template's lanes.
export RULESTREAM_PARALLELIZATION_FACTOR="${RULESTREAM_PARALLELIZATION_FACTOR:-1}"
# `lambda` master rules: the SDK's Lambda client reaches the rule functions that `cargo lambda
# watch` serves (its Invoke API), the same binaries as on AWS.
export AWS_ENDPOINT_URL_LAMBDA="${AWS_ENDPOINT_URL_LAMBDA:-http://127.0.0.1:$RULESTREAM_LAMBDA_PORT}"

# The contract the code, tests and demos read.
export RULESTREAM_PREFIX="${RULESTREAM_PREFIX:-rulestream}"
# Always the dummy credentials: LocalStack maps key "test" to account 000000000000.
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
unset AWS_SESSION_TOKEN AWS_PROFILE
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-$AWS_REGION}"
export AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL="${AWS_ENDPOINT_URL:-http://127.0.0.1:$RULESTREAM_AWS_PORT}"
# Redis speaks TLS only and wants a password, like ElastiCache with transit encryption and an AUTH
# token, so the functions' TLS + AUTH code path is the one tested. up.sh generates the CA and the
# server certificate (127.0.0.1, localhost) into $RULESTREAM_STATE/tls/ once; REDIS_CA_FILE is that
# CA (on AWS it is unset and the system roots are used). The token goes into REDIS_URL: URL-safe
# characters only. redis-cli: use rs_redis_cli from procs.sh.
export RULESTREAM_REDIS_TOKEN="${RULESTREAM_REDIS_TOKEN:-local-redis-token}"
export REDIS_CA_FILE="${REDIS_CA_FILE:-$RULESTREAM_STATE/tls/ca.pem}"
# A shell that sourced an older env.sh still holds its plain-text URL: replace that one.
[[ "${REDIS_URL:-}" == "redis://127.0.0.1:$RULESTREAM_REDIS_PORT" ]] && unset REDIS_URL
export REDIS_URL="${REDIS_URL:-rediss://:${RULESTREAM_REDIS_TOKEN}@127.0.0.1:$RULESTREAM_REDIS_PORT}"
# A Redis command may take 250 ms here before it counts as failed (50 ms on AWS, the default):
# debug builds of four function instances share two cores with LocalStack, and a command whose
# answer waits behind a busy moment is not a Redis failure.
export RULESTREAM_REDIS_TIMEOUT_MS="${RULESTREAM_REDIS_TIMEOUT_MS:-250}"
# Hosts the orchestrator may call (webhooks, http master rules): only this machine. The samples'
# example.com URLs are therefore recorded as blocked, never contacted.
# `host` alone allows ports 80/443; `host:*` any port (the e2e receivers listen on random ports).
export RULESTREAM_EGRESS_ALLOW="${RULESTREAM_EGRESS_ALLOW:-127.0.0.1:*,localhost:*}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:$RULESTREAM_KAFKA_PORT}"
