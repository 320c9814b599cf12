"""Creates rulestream's DynamoDB tables and S3 bucket (SPEC section 3), idempotently.

Run with the tools venv after `source localstack/env.sh`:
    "$RULESTREAM_PY" localstack/provision.py
boto3 takes the endpoint (AWS_ENDPOINT_URL), region and dummy credentials from env.sh, so the same
script provisions LocalStack or a moto server. Names are `<RULESTREAM_PREFIX>-...`.

Importable (seed.py does): `provision(session, prefix)`, `ensure_table(...)`,
`ensure_trigger_table(ddb, name)`, `ensure_bucket(...)`, and the `TABLES` layout.
"""

import os
import sys

import boto3
from botocore.exceptions import ClientError

PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")

# name suffix -> (key schema [(attribute, S|N, HASH|RANGE)], stream view type or None, TTL attribute or None)
TABLES = {
    "trigger": ([("execution_id", "S", "HASH"), ("seq", "N", "RANGE")], "NEW_IMAGE", "expires_at"),
    "executions": ([("execution_id", "S", "HASH")], None, None),
    "clients": ([("client_id", "S", "HASH"), ("flow_id", "S", "RANGE")], None, None),
    "catalog": ([("rule_id", "S", "HASH"), ("version", "N", "RANGE")], None, None),
}
BUCKET_SUFFIX = "configs"


def ensure_table(ddb, name, keys, stream_view, ttl_attr):
    """Creates the table unless it exists, waits for ACTIVE, then turns TTL on if wanted."""
    args = dict(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t, _ in keys],
        KeySchema=[{"AttributeName": a, "KeyType": k} for a, _, k in keys],
    )
    if stream_view:
        args["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream_view}
    try:
        ddb.create_table(**args)
        print(f"provision: created table {name}")
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceInUseException":
            raise
        print(f"provision: table {name} exists")
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    desc = ddb.describe_table(TableName=name)["Table"]
    if stream_view and desc.get("StreamSpecification", {}).get("StreamViewType") != stream_view:
        sys.exit(f"provision: ERROR: table {name} exists without a {stream_view} stream; delete it first")
    if ttl_attr:
        ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            ddb.update_time_to_live(
                TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attr})
            print(f"provision: enabled TTL on {name}.{ttl_attr}")
    return desc


def ensure_bucket(s3, name, region):
    try:
        s3.head_bucket(Bucket=name)
        print(f"provision: bucket {name} exists")
        return
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
    args = {"Bucket": name}
    if region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**args)
    print(f"provision: created bucket {name}")


def ensure_trigger_table(ddb, name):
    """Creates a table with the trigger schema (HASH execution_id S, RANGE seq N, NEW_IMAGE stream,
    TTL expires_at) under any name, e.g. an extra trigger table of a test; returns describe_table."""
    keys, stream_view, ttl_attr = TABLES["trigger"]
    return ensure_table(ddb, name, keys, stream_view, ttl_attr)


def provision(session=None, prefix=None):
    """Creates every table and the bucket of `prefix` (default RULESTREAM_PREFIX); idempotent."""
    session = session or boto3.session.Session()
    prefix = prefix or PREFIX
    ddb = session.client("dynamodb")
    print(f"provision: prefix {prefix!r} at {ddb.meta.endpoint_url}")
    for suffix, (keys, stream_view, ttl_attr) in TABLES.items():
        desc = ensure_table(ddb, f"{prefix}-{suffix}", keys, stream_view, ttl_attr)
        if stream_view:
            print(f"provision:   stream {desc['LatestStreamArn']}")
    ensure_bucket(session.client("s3"), f"{prefix}-{BUCKET_SUFFIX}", session.region_name)


def main():
    provision()


if __name__ == "__main__":
    main()
