#!/usr/bin/env bash
# Chain figures on the local stack (BENCHMARKS.md): brings the stack up like `make demo`, runs
# localstack/bench_hops.py, and leaves the stack running (`make down` stops it).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
source "$REPO/localstack/env.sh"
bash "$REPO/localstack/up.sh"
"$RULESTREAM_PY" "$REPO/localstack/provision.py"
"$RULESTREAM_PY" "$REPO/localstack/seed.py"
bash "$REPO/localstack/lambda.sh" start
"$RULESTREAM_PY" "$REPO/localstack/bench_hops.py" "$@"
