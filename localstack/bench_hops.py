"""Chain figures on the local stack, for BENCHMARKS.md (run by `make bench-stack`).

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/bench_hops.py [--executions 10] [--rules 20]

Needs the stack up, provisioned and seeded, and the orchestrator served by lambda.sh (the
script scripts/bench-stack.sh does all of that). It measures:

1. raw stream round trip: PutItem into a fresh table with a stream, then GetRecords in a tight
   loop (10 ms) until the record is visible;
1b. the hop floor: the raw round trip plus one Invoke of a function that does nothing, through
   the same runner: an UpdateItem on a table of its own (`<prefix>-bench-floor`), whose MODIFY
   record runner.py (no filter, polling every 10 ms) delivers to the orchestrator, which ignores
   MODIFY records; timed from the write to the runner's log line for that batch;
2. per-hop latency of the chain: a flow of N `when: "true"` rules, each going to the next; its
   own trigger table `<prefix>-trigger-bench`, fed by its own runner.py polling every 10 ms;
   hop = (finished_at - started_at) / (steps - 1) with steps = the summary's `steps_total`,
   executions run one after another (ids `bench:<uuid4>`: ids carry their client, SPEC 3);
3. AWS calls per hop made by the orchestrator, counted from LocalStack's request log during the
   chain runs (the bench's own calls — PutItem of seq 0 rows, BatchGetItem polling — and the
   runner's stream calls are not counted);
4. CPU per record of the orchestrator process (utime + stime from /proc), over the chain runs.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")
STATE = Path(os.environ.get("RULESTREAM_STATE", HERE / ".state"))
ddb = boto3.client("dynamodb")
streams = boto3.client("dynamodbstreams")
s3 = boto3.client("s3")
sys.path.insert(0, str(HERE))
from provision import ensure_trigger_table  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def raw_round_trip(n):
    table = f"{PREFIX}-bench-raw"
    ensure_trigger_table(ddb, table)
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][-1]["ShardId"]
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    out = []
    for i in range(n):
        key = f"bench:{uuid.uuid4()}"
        t0 = time.perf_counter()
        ddb.put_item(TableName=table, Item={"execution_id": {"S": key}, "seq": {"N": "0"}})
        seen = False
        while not seen:
            r = streams.get_records(ShardIterator=it, Limit=100)
            it = r["NextShardIterator"]
            seen = any(rec["dynamodb"]["Keys"]["execution_id"]["S"] == key for rec in r["Records"])
            if not seen:
                time.sleep(0.01)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def hop_floor(n):
    """Write -> stream -> runner -> Invoke of a do-nothing -> back, `n` times (ms)."""
    table = f"{PREFIX}-bench-floor"
    ensure_trigger_table(ddb, table)
    key = {"execution_id": {"S": "bench:floor"}, "seq": {"N": "0"}}
    ddb.put_item(TableName=table, Item=key)  # its INSERT is before the runner's LATEST
    log_path = STATE / "runner-floor.log"
    runner = subprocess.Popen(
        [sys.executable, str(HERE / "runner.py"), "--table", table, "--poll-interval", "0.01",
         "--starting-position", "LATEST", "--no-filter"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    out = []
    try:
        time.sleep(3)
        for i in range(n + 1):
            mark = log_path.stat().st_size
            t0 = time.perf_counter()
            ddb.update_item(TableName=table, Key=key, UpdateExpression="SET n = :n",
                            ExpressionAttributeValues={":n": {"N": str(i)}})
            deadline = t0 + 30
            while True:
                with open(log_path, "rb") as f:
                    f.seek(mark)
                    if b'"event": "batch"' in f.read():
                        break
                if time.perf_counter() > deadline:
                    raise SystemExit("the floor's MODIFY record never reached the function")
                time.sleep(0.002)
            if i:  # the first one warms the runner's path up
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        runner.terminate()
        runner.wait(timeout=10)
    return out


def register_chain(rules, flow_id="hops"):
    """A flow of `rules` `when` rules, each going to the next, as client `bench`'s `flow_id`."""
    flow = {
        "client_id": "bench", "flow_id": flow_id, "version": 1, "terminal_statuses": ["DONE"],
        "rules": [{"id": f"r{i}", "when": "input.n >= 0", "on": {"true": {"next": True}}} for i in range(rules - 1)]
        + [{"id": "last", "when": "true", "on": {"true": {"complete": "DONE"}}}],
    }
    key = f"flows/bench/{flow_id}/v1.json"
    s3.put_object(Bucket=f"{PREFIX}-configs", Key=key, Body=json.dumps(flow).encode())
    ddb.put_item(TableName=f"{PREFIX}-clients", Item={
        "client_id": {"S": "bench"}, "flow_id": {"S": flow_id}, "config_key": {"S": key},
        "enabled": {"BOOL": True},
        "release": {"M": {"stable": {"N": "1"}, "percent": {"N": "0"}, "generation": {"N": "1"}}}})


def start_runner(table, log_name):
    """runner.py on `table`, polling every 10 ms from the end of its stream; logs to STATE/log_name."""
    return subprocess.Popen(
        [sys.executable, str(HERE / "runner.py"), "--table", table, "--poll-interval", "0.01",
         "--starting-position", "LATEST"],
        stdout=open(STATE / log_name, "w"), stderr=subprocess.STDOUT)


def orchestrator_cpu():
    """utime + stime (seconds) of the orchestrator function process(es)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in subprocess.run(["pgrep", "-f", "target/.*/orchestrator$"], capture_output=True, text=True).stdout.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


CALL = re.compile(r"AWS (\w+)\.(\w+) => (\d+)")


def log_calls(since_bytes):
    log = STATE / "localstack.log"
    with open(log, "rb") as f:
        f.seek(since_bytes)
        text = f.read().decode("utf-8", "replace")
    counts = {}
    for m in CALL.finditer(text):
        k = f"{m.group(1)}.{m.group(2)}"
        counts[k] = counts.get(k, 0) + 1
    return counts


def chain(executions, rules):
    table = f"{PREFIX}-trigger-bench"
    ensure_trigger_table(ddb, table)
    register_chain(rules)
    runner = start_runner(table, "runner-bench.log")
    try:
        time.sleep(2)
        # Warm-up execution: loads the flow into the container's cache (not measured).
        run_one(table)
        log_mark = (STATE / "localstack.log").stat().st_size
        cpu0 = orchestrator_cpu()
        hops = []
        for _ in range(executions):
            e = run_one(table)
            t0 = datetime.fromisoformat(e["started_at"]["S"].replace("Z", "+00:00"))
            t1 = datetime.fromisoformat(e["finished_at"]["S"].replace("Z", "+00:00"))
            total = e.get("steps_total") or e.get("step")  # `step`: summaries of older versions
            if total is None:
                raise SystemExit(f"execution {e['execution_id']['S']} has no steps_total: {e}")
            steps = int(total["N"])
            hops.append((t1 - t0).total_seconds() * 1000 / (steps - 1))
        cpu = orchestrator_cpu() - cpu0
        time.sleep(1)
        calls = log_calls(log_mark)
    finally:
        runner.terminate()
        runner.wait(timeout=10)
    return hops, calls, cpu


def run_one(table):
    eid = f"bench:{uuid.uuid4()}"
    ddb.put_item(TableName=table, Item={
        "execution_id": {"S": eid}, "seq": {"N": "0"}, "client_id": {"S": "bench"},
        "flow_id": {"S": "hops"}, "input": {"M": {"n": {"N": "1"}}}})
    deadline = time.time() + 120
    while time.time() < deadline:
        r = ddb.batch_get_item(RequestItems={f"{PREFIX}-executions": {
            "Keys": [{"execution_id": {"S": eid}}], "ConsistentRead": True}})
        items = r["Responses"].get(f"{PREFIX}-executions", [])
        if items and items[0]["status"]["S"] != "RUNNING":
            return items[0]
        time.sleep(0.05)
    raise SystemExit(f"execution {eid} did not finish")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--executions", type=int, default=10)
    ap.add_argument("--rules", type=int, default=20)
    ap.add_argument("--raw", type=int, default=50)
    a = ap.parse_args()
    raw = raw_round_trip(a.raw)
    floor = hop_floor(a.raw)
    hops, calls, cpu = chain(a.executions, a.rules)
    records = a.executions * a.rules
    orch_ops = {k: v for k, v in calls.items() if k.startswith(("dynamodb.", "s3.", "sts.", "secretsmanager."))
                and k not in ("dynamodb.BatchGetItem", "dynamodb.DescribeTable")}
    # The bench itself wrote one seq-0 PutItem per execution.
    orch_ops["dynamodb.PutItem"] = orch_ops.get("dynamodb.PutItem", 0) - a.executions
    orch_ops = {k: v for k, v in orch_ops.items() if v}
    writes = sum(v for k, v in orch_ops.items() if k in ("dynamodb.TransactWriteItems", "dynamodb.PutItem", "dynamodb.UpdateItem"))
    reads = sum(orch_ops.values()) - writes
    result = {
        "raw_stream_round_trip_ms": {"p50": round(pct(raw, 50), 1), "p90": round(pct(raw, 90), 1), "n": len(raw)},
        "hop_ms": {"p50": round(pct(hops, 50), 1), "p90": round(pct(hops, 90), 1), "mean": round(statistics.mean(hops), 1),
                   "executions": a.executions, "rules": a.rules},
        "hop_overhead_vs_raw_p50_pct": round((pct(hops, 50) - pct(raw, 50)) / pct(raw, 50) * 100, 1),
        "hop_floor_ms": {"p50": round(pct(floor, 50), 1), "p90": round(pct(floor, 90), 1), "n": len(floor)},
        "hop_p50_over_floor_p50": round(pct(hops, 50) / pct(floor, 50), 2),
        "orchestrator_aws_calls": orch_ops,
        "aws_writes_per_hop": round(writes / records, 2),
        "aws_reads_per_hop": round(reads / records, 2),
        "orchestrator_cpu_us_per_record": round(cpu * 1e6 / records, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
