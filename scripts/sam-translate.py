"""Offline SAM transform: prints the plain CloudFormation that a SAM template deploys as.

Usage: python scripts/sam-translate.py TEMPLATE [REGION] > out.json   (python of the sam venv)

Why: cfn-lint (and so `sam validate --lint`) no longer runs the SAM transform; it checks
AWS::Serverless::* resources against SAM schemas only, which lets through e.g. an unknown property
in a function's event, a `!GetAtt` of a missing resource in `Policies`, or an IAM action that does
not exist. Running AWS's own translator (samtranslator, installed with aws-sam-cli) and linting its
output catches those. Nothing here touches the network: managed policy names resolve from the map
bundled with samtranslator, and local CodeUri folders are swapped for S3 locations the way
`sam package` would.
"""

import json
import os
import sys

from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class BundledPoliciesOnly:
    """Managed policy loader of last resort; the bundled map covers AWS's managed policies."""

    def load(self):
        raise SystemExit("sam-translate: a managed policy is not in samtranslator's bundled map "
                         "(resolving it would need IAM); use its ARN instead of its name")


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    # The translator reads the region from a boto3 session; no credentials, no instance metadata.
    os.environ["AWS_DEFAULT_REGION"] = sys.argv[2] if len(sys.argv) == 3 else "us-east-1"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

    with open(sys.argv[1], encoding="utf-8") as f:
        template = yaml_parse(f.read())
    for resource in (template.get("Resources") or {}).values():
        props = resource.get("Properties") if isinstance(resource, dict) else None
        if not isinstance(props, dict):
            continue
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = f"s3://sam-package-placeholder/{key.lower()}"

    try:
        out = transform(template, {}, BundledPoliciesOnly())
    except InvalidDocumentException as e:
        for cause in e.causes:
            print(f"sam transform: {cause.message}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
