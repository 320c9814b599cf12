#!/usr/bin/env bash
# The chain under load on the local stack (BENCHMARKS.md, `make bench-load`): brings the stack up
# like `make demo`, runs localstack/bench_load.py (arguments passed through), and leaves the stack
# running (`make down` stops it). RULESTREAM_LAMBDA_RELEASE=1 serves release builds.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
source "$REPO/localstack/env.sh"
bash "$REPO/localstack/up.sh"
"$RULESTREAM_PY" "$REPO/localstack/provision.py"
"$RULESTREAM_PY" "$REPO/localstack/seed.py"
bash "$REPO/localstack/lambda.sh" start
"$RULESTREAM_PY" "$REPO/localstack/bench_load.py" "$@"
