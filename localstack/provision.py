"""Creates rulestream's DynamoDB tables, S3 bucket and SQS queue (SPEC section 3), idempotently.

Run with the tools venv after `source localstack/env.sh`:
    "$RULESTREAM_PY" localstack/provision.py
boto3 takes the endpoint (AWS_ENDPOINT_URL), region and dummy credentials from env.sh, so the same
script provisions LocalStack or a moto server. Names are `<RULESTREAM_PREFIX>-...`; every table is
PAY_PER_REQUEST.

Tables (the layout of template.yaml):
- trigger     HASH execution_id S, RANGE seq N; stream NEW_IMAGE; TTL expires_at.
- steps       HASH execution_id S, RANGE seq N; TTL expires_at; one item per step.
              Sparse GSI `pending`: HASH pending_shard S, RANGE pending_due N (epoch ms), ALL
              (the attributes exist only while a delivery of the step is pending/retrying).
- executions  HASH execution_id S; TTL expires_at; the summary.
              GSI `by-client`: HASH client_id S, RANGE started_at S, ALL (listing without a scan).
              Sparse GSI `running`: HASH running_shard S, RANGE started_at S, ALL (present only
              while RUNNING; the sweeper finds stalled executions through it).
- clients     HASH client_id S, RANGE flow_id S.
- catalog     HASH rule_id S, RANGE version N.
- audit       HASH subject S (`<client>/<flow>` or `catalog/<rule>`), RANGE id S; append-only.
Bucket: <prefix>-configs.
Queue: <prefix>-orchestrator-dlq, the on-failure destination of the orchestrator's stream mapping
(template.yaml's OrchestratorDeadLetterQueue: 14 days' retention, SSE-SQS); runner.py --template
sends one invocation record per given-up batch there.

Idempotent: an existing table or queue is kept (a queue with other attributes is an error); a missing TTL is turned on; a missing GSI is added with
UpdateTable (one per call, as DynamoDB requires) and waited for until ACTIVE. A table that exists
with a different stream, TTL attribute or GSI key schema is an error (delete it first): nothing is
ever dropped or rebuilt here.

Importable (seed.py and bench_hops.py do): `provision(session, prefix)`, `ensure_table(...)`,
`ensure_trigger_table(ddb, name)`, `ensure_bucket(...)`, `ensure_queue(...)`, and the `TABLES` and
`QUEUES` layouts.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError

PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")
WAIT_S = 300  # how long to wait for a table or an index to become ACTIVE


def gsi(name, keys, projection="ALL"):
    """A global secondary index: name, [(attribute, S|N, HASH|RANGE)], projection type."""
    return {"name": name, "keys": keys, "projection": projection}


# name suffix -> (key schema [(attribute, S|N, HASH|RANGE)], stream view type or None,
#                 TTL attribute or None, [gsi(...)])
TABLES = {
    "trigger": ([("execution_id", "S", "HASH"), ("seq", "N", "RANGE")], "NEW_IMAGE", "expires_at", []),
    "steps": ([("execution_id", "S", "HASH"), ("seq", "N", "RANGE")], None, "expires_at", [
        gsi("pending", [("pending_shard", "S", "HASH"), ("pending_due", "N", "RANGE")]),
    ]),
    "executions": ([("execution_id", "S", "HASH")], None, "expires_at", [
        gsi("by-client", [("client_id", "S", "HASH"), ("started_at", "S", "RANGE")]),
        gsi("running", [("running_shard", "S", "HASH"), ("started_at", "S", "RANGE")]),
    ]),
    "clients": ([("client_id", "S", "HASH"), ("flow_id", "S", "RANGE")], None, None, []),
    "catalog": ([("rule_id", "S", "HASH"), ("version", "N", "RANGE")], None, None, []),
    "audit": ([("subject", "S", "HASH"), ("id", "S", "RANGE")], None, None, []),
}
BUCKET_SUFFIX = "configs"
# name suffix -> attributes, as template.yaml declares the queue (MessageRetentionPeriod,
# SqsManagedSseEnabled).
QUEUES = {
    "orchestrator-dlq": {"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"},
}


def _key_schema(keys):
    return [{"AttributeName": a, "KeyType": k} for a, _, k in keys]


def _gsi_create(index):
    return {
        "IndexName": index["name"],
        "KeySchema": _key_schema(index["keys"]),
        "Projection": {"ProjectionType": index["projection"]},
    }


def wait_active(ddb, name, index=None):
    """Waits until the table (and `index`, if given) is ACTIVE; returns describe_table's Table."""
    end = time.monotonic() + WAIT_S
    while True:
        try:
            desc = ddb.describe_table(TableName=name)["Table"]
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            desc = {}
        ok = desc.get("TableStatus") == "ACTIVE"
        if ok and index:
            found = [g for g in desc.get("GlobalSecondaryIndexes", []) if g["IndexName"] == index]
            ok = bool(found) and found[0].get("IndexStatus", "ACTIVE") == "ACTIVE"
        if ok:
            return desc
        if time.monotonic() > end:
            what = f"index {index} of table {name}" if index else f"table {name}"
            sys.exit(f"provision: ERROR: {what} not ACTIVE after {WAIT_S}s "
                     f"(table status {desc.get('TableStatus')})")
        time.sleep(1)


def ensure_gsis(ddb, name, desc, gsis):
    """Adds every GSI of `gsis` the table lacks (one UpdateTable per index, each waited for until
    ACTIVE); an existing one with another key schema is an error. Returns the final description."""
    for index in gsis:
        existing = {g["IndexName"]: g for g in desc.get("GlobalSecondaryIndexes", [])}
        have = existing.get(index["name"])
        if have:
            if have["KeySchema"] != _key_schema(index["keys"]):
                sys.exit(f"provision: ERROR: table {name} has an index {index['name']} with key schema "
                         f"{have['KeySchema']}, expected {_key_schema(index['keys'])}; delete the table first")
            if have.get("IndexStatus", "ACTIVE") != "ACTIVE":
                desc = wait_active(ddb, name, index["name"])
            continue
        # The table's own definitions plus the new index's keys (DynamoDB needs the latter; some
        # emulators replace the list with what is sent, so the former are sent again).
        defs = {d["AttributeName"]: d["AttributeType"] for d in desc.get("AttributeDefinitions", [])}
        defs.update({a: t for a, t, _ in index["keys"]})
        ddb.update_table(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in defs.items()],
            GlobalSecondaryIndexUpdates=[{"Create": _gsi_create(index)}],
        )
        print(f"provision: adding index {name}/{index['name']}")
        desc = wait_active(ddb, name, index["name"])
        print(f"provision: index {name}/{index['name']} ACTIVE")
    return desc


def ensure_ttl(ddb, name, ttl_attr):
    """Turns TTL on `ttl_attr` on unless it is on already; TTL on another attribute is an error."""
    ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    status, attr = ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")
    if status in ("ENABLED", "ENABLING"):
        if attr and attr != ttl_attr:
            sys.exit(f"provision: ERROR: table {name} has TTL on {attr!r}, expected {ttl_attr!r}; "
                     "delete the table first")
        return
    ddb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attr})
    print(f"provision: enabled TTL on {name}.{ttl_attr}")


def ensure_table(ddb, name, keys, stream_view, ttl_attr, gsis=()):
    """Creates the table (with its GSIs) unless it exists, waits for ACTIVE, adds any missing GSI,
    then turns TTL on if wanted. Returns describe_table's Table."""
    args = dict(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=_key_schema(keys),
    )
    attrs = {a: t for a, t, _ in keys}
    for index in gsis:
        attrs.update({a: t for a, t, _ in index["keys"]})
    args["AttributeDefinitions"] = [{"AttributeName": a, "AttributeType": t} for a, t in attrs.items()]
    if gsis:
        args["GlobalSecondaryIndexes"] = [_gsi_create(i) for i in gsis]
    if stream_view:
        args["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream_view}
    try:
        ddb.create_table(**args)
        print(f"provision: created table {name}")
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceInUseException":
            raise
        print(f"provision: table {name} exists")
    desc = wait_active(ddb, name)
    if desc["KeySchema"] != _key_schema(keys):
        sys.exit(f"provision: ERROR: table {name} exists with key schema {desc['KeySchema']}, "
                 f"expected {_key_schema(keys)}; delete it first")
    if stream_view and desc.get("StreamSpecification", {}).get("StreamViewType") != stream_view:
        sys.exit(f"provision: ERROR: table {name} exists without a {stream_view} stream; delete it first")
    desc = ensure_gsis(ddb, name, desc, gsis)
    if ttl_attr:
        ensure_ttl(ddb, name, ttl_attr)
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


def ensure_queue(sqs, name, attributes):
    """Creates the SQS queue unless it exists (CreateQueue with the same attributes is a no-op);
    one that exists with other attributes is an error. Returns the queue URL."""
    try:
        sqs.get_queue_url(QueueName=name)
        existed = True
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("AWS.SimpleQueueService.NonExistentQueue",
                                               "QueueDoesNotExist"):
            raise
        existed = False
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        sys.exit(f"provision: ERROR: queue {name} exists with other attributes than {attributes}; "
                 "delete it first")
    print(f"provision: queue {name} {'exists' if existed else 'created'}")
    return url


def ensure_trigger_table(ddb, name):
    """Creates a table with the trigger schema (HASH execution_id S, RANGE seq N, NEW_IMAGE stream,
    TTL expires_at) under any name, e.g. an extra trigger table of a test; returns describe_table."""
    keys, stream_view, ttl_attr, gsis = TABLES["trigger"]
    return ensure_table(ddb, name, keys, stream_view, ttl_attr, gsis)


def provision(session=None, prefix=None):
    """Creates every table and the bucket of `prefix` (default RULESTREAM_PREFIX); idempotent."""
    session = session or boto3.session.Session()
    prefix = prefix or PREFIX
    ddb = session.client("dynamodb")
    print(f"provision: prefix {prefix!r} at {ddb.meta.endpoint_url}")
    for suffix, (keys, stream_view, ttl_attr, gsis) in TABLES.items():
        desc = ensure_table(ddb, f"{prefix}-{suffix}", keys, stream_view, ttl_attr, gsis)
        if stream_view:
            print(f"provision:   stream {desc['LatestStreamArn']}")
        for g in desc.get("GlobalSecondaryIndexes", []):
            print(f"provision:   index {g['IndexName']} {g.get('IndexStatus', '')}".rstrip())
    ensure_bucket(session.client("s3"), f"{prefix}-{BUCKET_SUFFIX}", session.region_name)
    sqs = session.client("sqs")
    for suffix, attributes in QUEUES.items():
        ensure_queue(sqs, f"{prefix}-{suffix}", attributes)


def main():
    provision()


if __name__ == "__main__":
    main()
