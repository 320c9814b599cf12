"""Write units per hop, for BENCHMARKS.md's cost model (run by `make bench-stack`).

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/bench_cost.py [--rules 50] [--input-bytes 1024]

Runs one execution of a chain of N `when` rules (each going to the next, `fuse` off, so every
step is a hop) with an input of about 1 KB, then weighs what each hop wrote: the step item
(steps table) and the sealed next row (trigger table) at step 5, step N-1 and step N (the
last, which writes no row), and the summary
(executions table) that is written at the start and the end. Each item is read back as DynamoDB
holds it and put again into a scratch table with ReturnConsumedCapacity, so DynamoDB (Local)
applies its own documented rounding (1 write unit per started KB). The orchestrator's own writes
are two conditional PutItems per hop (BENCHMARKS.md, AWS calls per hop), so a hop costs the
units of those two items.

Needs what bench_hops.py needs (the stack up, seeded, the orchestrator served by lambda.sh).
"""

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")
ddb = boto3.client("dynamodb")
sys.path.insert(0, str(HERE))
from bench_hops import register_chain, start_runner  # noqa: E402
from provision import ensure_trigger_table  # noqa: E402


def scratch_table():
    name = f"{PREFIX}-bench-units"
    try:
        ddb.create_table(
            TableName=name, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "execution_id", "KeyType": "HASH"},
                       {"AttributeName": "seq", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "execution_id", "AttributeType": "S"},
                                  {"AttributeName": "seq", "AttributeType": "N"}])
        ddb.get_waiter("table_exists").wait(TableName=name)
    except ddb.exceptions.ResourceInUseException:
        pass
    return name


def units(table, item):
    """Write units DynamoDB charges to put `item` (as it is stored), and its size in bytes."""
    item = dict(item)
    item.setdefault("seq", {"N": "0"})
    # A put over an existing item is charged for the larger of the two: start from none.
    ddb.delete_item(TableName=table, Key={"execution_id": item["execution_id"], "seq": item["seq"]})
    r = ddb.put_item(TableName=table, Item=item, ReturnConsumedCapacity="TOTAL")
    size = len(json.dumps(item))  # an upper bound of the stored size, for the record
    return r.get("ConsumedCapacity", {}).get("CapacityUnits"), size


def run(rules, input_bytes):
    trigger = f"{PREFIX}-trigger-bench"
    ensure_trigger_table(ddb, trigger)
    # One flow per length: versions are immutable, and a warm orchestrator keeps them.
    flow_id = f"cost{rules}"
    register_chain(rules, flow_id)
    runner = start_runner(trigger, "runner-bench-cost.log")
    try:
        time.sleep(2)
        eid = f"bench:{uuid.uuid4()}"
        blob = "x" * max(0, input_bytes - 40)
        ddb.put_item(TableName=trigger, Item={
            "execution_id": {"S": eid}, "seq": {"N": "0"}, "client_id": {"S": "bench"},
            "flow_id": {"S": flow_id},
            "input": {"M": {"n": {"N": "1"}, "note": {"S": blob}}}})
        deadline = time.time() + 300
        while time.time() < deadline:
            e = ddb.get_item(TableName=f"{PREFIX}-executions",
                             Key={"execution_id": {"S": eid}}, ConsistentRead=True).get("Item")
            if e and e["status"]["S"] != "RUNNING":
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"execution {eid} did not finish")
    finally:
        runner.terminate()
        runner.wait(timeout=10)
    return eid, e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--input-bytes", type=int, default=1024)
    a = ap.parse_args()
    eid, summary = run(a.rules, a.input_bytes)
    scratch = scratch_table()
    out = {"rules": a.rules, "input_bytes": a.input_bytes, "status": summary["status"]["S"]}
    for step in (5, a.rules - 1, a.rules):
        seq = step - 1  # step n has seq n-1
        key = {"execution_id": {"S": eid}, "seq": {"N": str(seq)}}
        step_item = ddb.get_item(TableName=f"{PREFIX}-steps", Key=key, ConsistentRead=True)["Item"]
        su, ss = units(scratch, step_item)
        row = ddb.get_item(TableName=f"{PREFIX}-trigger-bench",
                           Key={"execution_id": {"S": eid}, "seq": {"N": str(seq + 1)}},
                           ConsistentRead=True).get("Item")
        ru, rs = units(scratch, row) if row else (0, 0)
        out[f"step_{step}"] = {"step_item_units": su, "step_item_bytes": ss,
                               "next_row_units": ru, "next_row_bytes": rs,
                               "units_per_hop": (su or 0) + (ru or 0)}
    summ = dict(summary)
    summ["execution_id"] = {"S": eid + ":summary"}
    out["summary_units"], out["summary_bytes"] = units(scratch, summ)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
