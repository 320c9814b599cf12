"""Seeds a provisioned local stack with the sample clients, flows and master rules. Idempotent.

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/provision.py     # tables + bucket first
    "$RULESTREAM_PY" localstack/seed.py [--configs DIR] [--extra-trigger-table NAME ...] [--no-seed]

For the prefix in RULESTREAM_PREFIX (SPEC section 3):
- every flow file `client-configs/<client>/<flow>.json` (the catalog/, schema/ and examples/ folders
  are not flows) is uploaded unchanged to s3://<prefix>-configs/flows/<client_id>/<flow_id>/v<version>.json
  (ids and version read from the file);
- one `<prefix>-clients` item per flow: {client_id, flow_id, config_key, enabled: true,
  api_key_sha256: sha256 hex of "demo-key-<client_id>", release: {stable: <version>, percent: 0,
  generation: 1}} (no candidate);
- every master rule of `client-configs/catalog/*.json` (a file holds one rule object or an array)
  goes to `<prefix>-catalog` with the same field names (numbers as N, params as a map);
- client acme-bank gets client data (SPEC section 3): Secrets Manager secret
  `rulestream/acme-bank/client-data` ({"desk": "equities", "restricted_symbols": ["TSLA", "GME"]}),
  an IAM role `rulestream-client-acme-bank` (`rulestream-client-<client_id>`) that principals of
  account 000000000000 may assume only with `sts:ExternalId` = the client id (trust policy
  Condition StringEquals) and that may read the secret, and `role_arn` + `secret_id` on its
  clients items. (LocalStack and moto do not enforce the condition; on AWS it is what stops one
  client's id from being used to read another's data.)
- the orchestrator's state key, Secrets Manager secret `<prefix>-system/state-key` (or the name in
  RULESTREAM_STATE_KEY_SECRET): a random 64-character alphanumeric string, created ONLY IF MISSING
  and never overwritten (trigger rows in flight are sealed with it; a new key would make them
  unreadable). A secret pending deletion is restored.
Re-running overwrites everything else with the same values (a changed release state is reset).

Webhook signing secrets (`rulestream/<client_id>/...`, e.g. `rulestream/acme-bank/preclear-webhook-hmac`
referenced by the sample flows) are not created: the samples' webhook URLs are outside
RULESTREAM_EGRESS_ALLOW, so their deliveries are refused before any key is read.

--extra-trigger-table NAME (repeatable) also creates a table with the trigger schema (HASH
execution_id S, RANGE seq N, NEW_IMAGE stream, TTL expires_at), e.g. for a test's own runner;
--no-seed does only that.
"""

import argparse
import hashlib
import json
import os
import secrets
import string
import sys
from decimal import Decimal
from pathlib import Path

import boto3
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import provision  # noqa: E402  (same folder)

REPO = Path(__file__).resolve().parent.parent
NOT_FLOWS = {"catalog", "schema", "examples"}
ACCOUNT = "000000000000"  # LocalStack's account for the dummy "test" credentials

# Client data of acme-bank (the orchestrator assumes the role and reads the secret).
CLIENT_DATA = {
    "acme-bank": {
        "secret_name": "rulestream/acme-bank/client-data",
        "secret": {"desk": "equities", "restricted_symbols": ["TSLA", "GME"]},
    },
}
STATE_KEY_CHARS = string.ascii_letters + string.digits
STATE_KEY_LEN = 64


def client_role_name(client_id):
    """The client data role in the client's account (design: rulestream-client-<client_id>)."""
    return f"rulestream-client-{client_id}"


def state_key_secret_name(prefix):
    return os.environ.get("RULESTREAM_STATE_KEY_SECRET") or f"{prefix}-system/state-key"

_ser = TypeSerializer()


def to_item(obj):
    """A JSON object (floats parsed as Decimal) -> DynamoDB attribute map."""
    return {k: _ser.serialize(v) for k, v in obj.items()}


def load_json(path):
    with open(path, "rb") as f:
        raw = f.read()
    return raw, json.loads(raw, parse_float=Decimal)


def flow_files(configs):
    for client_dir in sorted(p for p in configs.iterdir() if p.is_dir()):
        if client_dir.name in NOT_FLOWS or client_dir.name.startswith("."):
            continue
        yield from sorted(client_dir.glob("*.json"))


def api_key_sha256(client_id):
    return hashlib.sha256(f"demo-key-{client_id}".encode()).hexdigest()


def upload_flow(s3, bucket, path):
    """Uploads one flow file; returns (client_id, flow_id, version, key)."""
    raw, flow = load_json(path)
    client_id, flow_id, version = flow["client_id"], flow["flow_id"], int(flow["version"])
    if path.parent.name != client_id or path.stem != flow_id:
        print(f"seed: WARNING: {path.relative_to(REPO)} declares {client_id}/{flow_id}")
    key = f"flows/{client_id}/{flow_id}/v{version}.json"
    md5 = hashlib.md5(raw).hexdigest()
    try:
        same = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"') == md5
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
            raise
        same = False
    if same:
        print(f"seed: s3://{bucket}/{key} unchanged")
    else:
        s3.put_object(Bucket=bucket, Key=key, Body=raw, ContentType="application/json")
        print(f"seed: uploaded s3://{bucket}/{key}")
    return client_id, flow_id, version, key


def ensure_client_data(session, client_id, spec):
    """Secret + assumable role for one client; returns (role_arn, secret_id)."""
    sm, iam = session.client("secretsmanager"), session.client("iam")
    name, value = spec["secret_name"], json.dumps(spec["secret"])
    try:
        arn = sm.create_secret(Name=name, SecretString=value)["ARN"]
        print(f"seed: created secret {name}")
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceExistsException":
            raise
        arn = sm.put_secret_value(SecretId=name, SecretString=value)["ARN"]
        print(f"seed: updated secret {name}")

    # Only with ExternalId = the client id (the orchestrator passes it on AssumeRole).
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": client_id}}}]})
    role = client_role_name(client_id)
    try:
        role_arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust,
                                   Description=f"rulestream: read {client_id}'s client data")["Role"]["Arn"]
        print(f"seed: created role {role}")
    except ClientError as e:
        if e.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
        iam.update_assume_role_policy(RoleName=role, PolicyDocument=trust)
        role_arn = iam.get_role(RoleName=role)["Role"]["Arn"]
        print(f"seed: role {role} exists")
    # What the role may do (LocalStack does not enforce IAM; on AWS this is what makes it work).
    iam.put_role_policy(RoleName=role, PolicyName="read-client-data", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
            "Resource": [arn, f"arn:aws:secretsmanager:*:{ACCOUNT}:secret:{name}-*"]}]}))
    return role_arn, name


def ensure_state_key(session, prefix):
    """Creates the state-key secret with a random value if it does not exist; never overwrites it."""
    sm = session.client("secretsmanager")
    name = state_key_secret_name(prefix)
    try:
        desc = sm.describe_secret(SecretId=name)
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        desc = None
    if desc and desc.get("DeletedDate"):
        sm.restore_secret(SecretId=name)  # scheduled for deletion: bring the same key back
        print(f"seed: restored secret {name} (it was scheduled for deletion)")
    if desc:
        print(f"seed: secret {name} exists (kept: rows in flight are sealed with it)")
        return name
    value = "".join(secrets.choice(STATE_KEY_CHARS) for _ in range(STATE_KEY_LEN))
    try:
        sm.create_secret(Name=name, SecretString=value,
                         Description="rulestream: key material that seals carried state")
        print(f"seed: created secret {name} (random, {STATE_KEY_LEN} characters)")
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceExistsException":
            raise
        print(f"seed: secret {name} exists (kept)")  # created meanwhile by someone else
    return name


def seed(session, prefix, configs):
    ddb, s3 = session.client("dynamodb"), session.client("s3")
    bucket, clients_t, catalog_t = f"{prefix}-configs", f"{prefix}-clients", f"{prefix}-catalog"
    try:
        s3.head_bucket(Bucket=bucket)
        for t in (clients_t, catalog_t):
            ddb.describe_table(TableName=t)
    except ClientError as e:
        sys.exit(f"seed: ERROR: {e} -- run localstack/provision.py first (prefix {prefix!r})")

    ensure_state_key(session, prefix)

    client_data = {}
    n_flows = 0
    for path in flow_files(configs):
        client_id, flow_id, version, key = upload_flow(s3, bucket, path)
        item = {
            "client_id": client_id, "flow_id": flow_id, "config_key": key, "enabled": True,
            "api_key_sha256": api_key_sha256(client_id),
            "release": {"stable": version, "percent": 0, "generation": 1},
        }
        if client_id in CLIENT_DATA:
            if client_id not in client_data:
                client_data[client_id] = ensure_client_data(session, client_id, CLIENT_DATA[client_id])
            item["role_arn"], item["secret_id"] = client_data[client_id]
        ddb.put_item(TableName=clients_t, Item=to_item(item))
        print(f"seed: {clients_t} {client_id}/{flow_id} stable v{version}"
              + (" (client data)" if "role_arn" in item else ""))
        n_flows += 1

    n_rules = 0
    for path in sorted((configs / "catalog").glob("*.json")):
        _, doc = load_json(path)
        for rule in doc if isinstance(doc, list) else [doc]:
            ddb.put_item(TableName=catalog_t, Item=to_item(rule))
            print(f"seed: {catalog_t} {rule['rule_id']} v{rule['version']} ({rule['kind']})")
            n_rules += 1
    print(f"seed: done: {n_flows} flows, {n_rules} catalog rules, prefix {prefix!r}")


def main():
    p = argparse.ArgumentParser(description="Seed the local stack with the sample configs.")
    p.add_argument("--configs", type=Path, default=REPO / "client-configs",
                   help="client-configs folder (default: the repo's)")
    p.add_argument("--extra-trigger-table", action="append", default=[], metavar="NAME",
                   help="also create a table with the trigger schema (repeatable)")
    p.add_argument("--no-seed", action="store_true", help="only create the extra trigger tables")
    args = p.parse_args()
    prefix = os.environ.get("RULESTREAM_PREFIX", "rulestream")
    session = boto3.session.Session()
    for name in args.extra_trigger_table:
        desc = provision.ensure_trigger_table(session.client("dynamodb"), name)
        print(f"seed: trigger table {name}: stream {desc['LatestStreamArn']}")
    if not args.no_seed:
        seed(session, prefix, args.configs)


if __name__ == "__main__":
    main()
