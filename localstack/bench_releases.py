"""Release and rule-kind figures on the local stack, for BENCHMARKS.md (run by `make bench-stack`).

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/bench_releases.py [--messages 300] [--executions 30]

Needs the stack up, provisioned and seeded, the functions served by lambda.sh and the CLI built
(scripts/bench-stack.sh does all of that). It starts its own stream runner (a bench trigger
table, polling every 10 ms), its own releases-topic runner and the example Python rule, and stops
them at the end. It measures:

1. release latency: `rulestream upload v2 --percent 100` returns (the bridge has applied it);
   from then, one execution is started every 20 ms until one runs v2. Figures: the time the
   upload command takes (validate, store, send, wait for the bridge), and the time from `upload`
   returning to the start of the first execution on v2, on a warm orchestrator;
2. bridge throughput: N `set_percent` messages, each made from the generation the one before it
   leads to, sent to the topic at once; figure: messages applied per second (first send to the
   release reaching the last generation);
3. rule kinds: one-rule flows deciding with a `when` rule, a `lambda` master rule (the Rust
   example, functions/rules/score) and an `http` master rule (the Python example,
   functions/rules/risk); each run E times one after another; figure: the step's duration as the
   step item records it (`duration`, in ms, the decision including the call out), p50 and p95, and
   the extra latency of lambda and http over when.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")
STATE = Path(os.environ.get("RULESTREAM_STATE", HERE / ".state"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/rulestream/target"))
CLI = str(TARGET / "debug" / "rulestream")
ddb = boto3.client("dynamodb")
s3 = boto3.client("s3")
sys.path.insert(0, str(HERE))
from provision import ensure_trigger_table  # noqa: E402

TABLE = f"{PREFIX}-trigger-bench-rel"
UPLOAD_MS = 0.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def register(flow):
    key = f"flows/{flow['client_id']}/{flow['flow_id']}/v{flow['version']}.json"
    s3.put_object(Bucket=f"{PREFIX}-configs", Key=key, Body=json.dumps(flow).encode())
    ddb.put_item(TableName=f"{PREFIX}-clients", Item={
        "client_id": {"S": flow["client_id"]}, "flow_id": {"S": flow["flow_id"]},
        "config_key": {"S": key}, "enabled": {"BOOL": True},
        "release": {"M": {"stable": {"N": str(flow["version"])}, "percent": {"N": "0"},
                          "generation": {"N": "1"}}}})


def summary(eid):
    r = ddb.get_item(TableName=f"{PREFIX}-executions", Key={"execution_id": {"S": eid}},
                     ConsistentRead=True)
    return r.get("Item")


def start(flow_id, key, extra=None):
    eid = f"bench:{flow_id}-{uuid.uuid4()}"
    item = {"execution_id": {"S": eid}, "seq": {"N": "0"}, "client_id": {"S": "bench"},
            "flow_id": {"S": flow_id},
            "input": {"M": {"key": {"S": key}, **(extra or {})}}}
    ddb.put_item(TableName=TABLE, Item=item)
    return eid


def wait_done(eid, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        s = summary(eid)
        if s and s["status"]["S"] != "RUNNING":
            return s
        time.sleep(0.02)
    raise SystemExit(f"bench: {eid} did not finish in {deadline}s")


def release_latency():
    flow_id = f"rel-{uuid.uuid4().hex[:8]}"
    base = {"client_id": "bench", "flow_id": flow_id, "terminal_statuses": ["V1", "V2"],
            "gray_key": "input.key"}
    register({**base, "version": 1,
              "rules": [{"id": "a", "when": "true", "on": {"true": {"complete": "V1"}}}]})
    # Warm: the orchestrator has the flow and the clients row cached.
    for i in range(3):
        wait_done(start(flow_id, f"warm{i}"))
    v2 = STATE / f"{flow_id}-v2.json"
    v2.write_text(json.dumps({**base, "version": 2,
                              "rules": [{"id": "a", "when": "true", "on": {"true": {"complete": "V2"}}}]}))
    t_cmd = time.time()
    up = subprocess.run([CLI, "upload", str(v2), "--percent", "100", "--json"], capture_output=True, text=True)
    t0 = time.time()
    global UPLOAD_MS
    UPLOAD_MS = (t0 - t_cmd) * 1000
    if up.returncode != 0:
        raise SystemExit(f"bench: upload failed: {up.stderr}")
    started = []
    while time.time() - t0 < 30:
        started.append((time.time(), start(flow_id, f"k{len(started)}")))
        time.sleep(0.02)
        # Look at what has finished so far.
        for at, eid in list(started):
            s = summary(eid)
            if s and s["status"]["S"] != "RUNNING":
                started.remove((at, eid))
                if s["flow_version"]["N"] == "2":
                    return (at - t0) * 1000
    raise SystemExit("bench: no execution ran v2 within 30 s of the upload")


def bridge_throughput(n):
    flow_id = f"thr-{uuid.uuid4().hex[:8]}"
    base = {"client_id": "bench", "flow_id": flow_id, "terminal_statuses": ["OK"]}
    register({**base, "version": 1, "rules": [{"id": "a", "when": "true", "on": {"true": {"complete": "OK"}}}]})
    v2 = STATE / f"{flow_id}-v2.json"
    v2.write_text(json.dumps({**base, "version": 2, "rules": [{"id": "a", "when": "false || true",
                                                               "on": {"true": {"complete": "OK"}}}]}))
    up = subprocess.run([CLI, "upload", str(v2), "--percent", "1", "--json"], capture_output=True, text=True)
    if up.returncode != 0:
        raise SystemExit(f"bench: upload failed: {up.stderr}")
    g0 = json.loads(up.stdout)["release"]["generation"]
    from kafka import KafkaProducer
    producer = KafkaProducer(bootstrap_servers=os.environ.get("KAFKA_BROKERS", "127.0.0.1:19092").split(","))
    t0 = time.time()
    for i in range(n):
        msg = {"op": "set_percent", "client_id": "bench", "flow_id": flow_id, "message_id": f"thr-{i}-{uuid.uuid4()}",
               "actor": "bench", "at": "2026-11-30T00:00:00.000Z", "generation": g0 + i, "percent": (i % 100) + 0.5}
        producer.send(f"{PREFIX}.releases", key=f"bench/{flow_id}".encode(), value=json.dumps(msg).encode())
    producer.flush()
    target = g0 + n
    while time.time() - t0 < 300:
        r = ddb.get_item(TableName=f"{PREFIX}-clients", ConsistentRead=True,
                         Key={"client_id": {"S": "bench"}, "flow_id": {"S": flow_id}})["Item"]
        if int(r["release"]["M"]["generation"]["N"]) >= target:
            return n / (time.time() - t0)
        time.sleep(0.05)
    raise SystemExit("bench: the bridge did not apply every message within 300 s")


def rule_kinds(executions, risk_url):
    catalog = f"{PREFIX}-catalog"
    tag = uuid.uuid4().hex[:8]
    rules = {
        "when": {"id": "a", "when": "input.amount > 100", "on": {"true": {"complete": "HIGH"}, "false": {"complete": "LOW"}}},
        "lambda": {"id": "a", "use": f"bench_score_{tag}", "on": {"high": {"complete": "HIGH"}, "low": {"complete": "LOW"}}},
        "http": {"id": "a", "use": f"bench_risk_{tag}", "on": {"risky": {"complete": "HIGH"}, "safe": {"complete": "LOW"}}},
    }
    for item in [
        {"rule_id": {"S": f"bench_score_{tag}"}, "version": {"N": "1"}, "kind": {"S": "lambda"},
         "function": {"S": "rulestream-rule-score"}, "timeout_ms": {"N": "10000"},
         "params": {"M": {"threshold": {"N": "100"}}}},
        {"rule_id": {"S": f"bench_risk_{tag}"}, "version": {"N": "1"}, "kind": {"S": "http"},
         "url": {"S": risk_url}, "timeout_ms": {"N": "10000"}, "params": {"M": {}}},
    ]:
        ddb.put_item(TableName=catalog, Item=item)
    subprocess.run(["bash", "-c", f'source "{HERE}/env.sh"; redis-cli --tls --cacert "$REDIS_CA_FILE" -u "$REDIS_URL" INCR {PREFIX}:epoch'],
                   capture_output=True)
    out = {}
    for kind, rule in rules.items():
        flow_id = f"kind-{kind}-{tag}"
        register({"client_id": "bench", "flow_id": flow_id, "version": 1,
                  "terminal_statuses": ["HIGH", "LOW"], "rules": [rule]})
        durations = []
        for i in range(executions + 2):
            eid = start(flow_id, f"k{i}", {"amount": {"N": "150"}, "country": {"S": "FR"}})
            s = wait_done(eid)
            if s["status"]["S"] not in ("HIGH", "LOW"):
                raise SystemExit(f"bench: {kind} rule ended {s['status']['S']}: {s.get('reason')}")
            step = ddb.get_item(TableName=f"{PREFIX}-steps", ConsistentRead=True,
                                Key={"execution_id": {"S": eid}, "seq": {"N": "0"}})["Item"]
            if i >= 2:  # the first two warm the function and the caches
                durations.append(float(step["duration"]["N"]))
        out[kind] = durations
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--executions", type=int, default=30)
    args = ap.parse_args()
    ensure_trigger_table(ddb, TABLE)
    procs = []
    risk_port = os.environ.get("RULESTREAM_RULE_RISK_PORT", "9181")
    try:
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "runner.py"), "--table", TABLE, "--poll-interval", "0.01",
             "--starting-position", "LATEST"], stdout=open(STATE / "bench-rel-runner.log", "w"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "kafka_runner.py"), "--topic", f"{PREFIX}.releases", "--poll-interval", "0.02",
             "--starting-position", "LATEST"],
            stdout=open(STATE / "bench-rel-kafka.log", "w"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "functions/rules/risk/app.py"), "--listen", f"127.0.0.1:{risk_port}"],
            stdout=open(STATE / "bench-rel-risk.log", "w"), stderr=subprocess.STDOUT))
        # The topic runner starts at the end of the topic: wait until it is positioned there, or
        # the upload's message would come before it and be skipped.
        log = STATE / "bench-rel-kafka.log"
        end = time.time() + 60
        while '"assigned"' not in log.read_text(errors="replace"):
            if time.time() > end:
                raise SystemExit("bench: the releases runner never got the topic's partitions")
            time.sleep(0.2)
        time.sleep(1)
        latency = release_latency()
        throughput = bridge_throughput(args.messages)
        kinds = rule_kinds(args.executions, f"http://127.0.0.1:{risk_port}/risk")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    when50 = statistics.median(kinds["when"])
    print(json.dumps({
        "upload_command_ms": round(UPLOAD_MS, 1),
        "release_upload_to_first_v2_execution_ms": round(latency, 1),
        "bridge_messages_per_sec": round(throughput, 1),
        "bridge_messages": args.messages,
        "step_ms": {k: {"p50": round(statistics.median(v), 2), "p95": round(pct(v, 95), 2), "n": len(v)}
                    for k, v in kinds.items()},
        "extra_over_when_p50_ms": {k: round(statistics.median(kinds[k]) - when50, 2) for k in ("lambda", "http")},
    }, indent=2))


if __name__ == "__main__":
    main()
