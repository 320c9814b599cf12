#!/usr/bin/env bash
# Checks template.yaml offline; exits non-zero on any finding.
#   1. `sam validate --lint`: cfn-lint with SAM's schemas for AWS::Serverless::* resources.
#   2. AWS's SAM translator turns the template into the CloudFormation it deploys as
#      (scripts/sam-translate.py), and cfn-lint checks that, errors and warnings. Step 1 alone lets
#      through e.g. an unknown property in a function's event, a !GetAtt of a missing resource in
#      Policies, or an IAM action that does not exist (cfn-lint skips those checks on SAM input).
#   3. scripts/check-policies.py on that same generated CloudFormation: least privilege of the
#      roles and the client writer policy, Redis TLS + AUTH, TTL and indexes of the tables; then
#      its --self-test, which breaks the policies on purpose and expects each break caught.
# Usage: scripts/check-template.sh [TEMPLATE]   (default: template.yaml at the repo root)
# First run installs aws-sam-cli and cfn-lint (`bash localstack/install.sh sam`, ~1 min).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/localstack/env.sh"
TEMPLATE="$(realpath "${1:-$ROOT/template.yaml}")"
REGION=us-east-1
say() { echo "check-template: $*"; }

# Only the sam step of install.sh; it is a no-op when the sam venv matches sam-constraints.txt.
bash "$ROOT/localstack/install.sh" sam
SAM="$RULESTREAM_SAM_VENV/bin/sam"
CFN_LINT="$RULESTREAM_SAM_VENV/bin/cfn-lint"

# Keep sam offline and out of ~/.aws-sam: no telemetry, and a version check that is never due
# (sam asks PyPI for a newer release when its last check is over a week old; it ignores the
# timestamp unless it is a float, hence the `.0`).
export SAM_CLI_TELEMETRY=0
export __SAM_CLI_APP_DIR="$RULESTREAM_TOOLS/sam-home"
mkdir -p "$__SAM_CLI_APP_DIR"
printf '{"telemetryEnabled": false, "lastVersionCheck": %s.0}\n' "$(date +%s)" \
  >"$__SAM_CLI_APP_DIR/metadata.json"

say "sam validate --lint ($TEMPLATE)"
(cd "$(dirname "$TEMPLATE")" && "$SAM" validate --lint -t "$TEMPLATE" --region "$REGION")

out="$(mktemp "${TMPDIR:-/tmp}/rulestream-template.XXXXXX.json")"
say "SAM transform + cfn-lint of the generated CloudFormation"
if ! "$RULESTREAM_SAM_VENV/bin/python" "$ROOT/scripts/sam-translate.py" "$TEMPLATE" "$REGION" >"$out"; then
  rm -f "$out"
  say "FAILED: the SAM transform rejected the template (reason above)"
  exit 1
fi
# cfn-lint exit code bits: 2 errors, 4 warnings, 8 informational (anything else: it failed to run).
# Everything but informational fails the check.
rc=0
"$CFN_LINT" --regions "$REGION" -- "$out" || rc=$?
if ((rc & ~8)); then
  say "FAILED: findings above are in the generated CloudFormation, kept at $out"
  exit 1
fi

say "least-privilege checks of the generated CloudFormation (scripts/check-policies.py)"
for mode in "" --self-test; do
  if ! "$RULESTREAM_SAM_VENV/bin/python" "$ROOT/scripts/check-policies.py" ${mode:+"$mode"} "$out"; then
    say "FAILED: check-policies.py${mode:+ $mode} (above), on the generated CloudFormation kept at $out"
    exit 1
  fi
done
rm -f "$out"
say "OK"
