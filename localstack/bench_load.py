"""The chain under load, for BENCHMARKS.md (run by `make bench-load`).

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/bench_load.py [--in-flight 200] [--seconds 60] [--rules 5] \\
        [--idle 10] [--parallelization-factor N]

Needs the stack up, provisioned and seeded, and the orchestrator served by lambda.sh
(`bash scripts/bench-stack.sh load` does all of that). A flow of `--rules` `when` rules, each
going to the next (one hop per rule), on its own trigger table `<prefix>-trigger-load` fed by
its own runner.py (the template's stream settings, `--parallelization-factor` overriding the
template's ParallelizationFactor when given).

1. idle: `--idle` executions one after another; hop = (finished_at - started_at) / (steps - 1),
   from the summary the orchestrator writes (its own clock, so the bench's polling adds nothing);
2. load: `--in-flight` executions kept in flight for `--seconds` (a finished one is replaced at
   once), then the stragglers are waited for. Throughput is the executions finished inside the
   window after its first 10 s (the ramp), per second; hop p50/p99 are over the executions that
   started after the ramp and finished.

Prints one JSON object. The goal (performance issue, goal 5): p99 hop under load <= 2 x idle p50.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import boto3

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")
STATE = Path(os.environ.get("RULESTREAM_STATE", HERE / ".state"))
ddb = boto3.client("dynamodb")
sys.path.insert(0, str(HERE))
from bench_hops import pct, register_chain  # noqa: E402
from provision import ensure_trigger_table  # noqa: E402

FLOW = "load"
TABLE = f"{PREFIX}-trigger-load"
EXECUTIONS = f"{PREFIX}-executions"


def start_runner(parallelization):
    args = [sys.executable, str(HERE / "runner.py"), "--table", TABLE, "--template",
            str(REPO / "template.yaml"), "--prefix", PREFIX, "--poll-interval", "0.01",
            "--starting-position", "LATEST",
            "--failures-file", str(STATE / "runner-load.failures.jsonl")]
    if parallelization:
        args += ["--parallelization-factor", str(parallelization)]
    return subprocess.Popen(args, stdout=open(STATE / "runner-load.log", "w"),
                            stderr=subprocess.STDOUT)


def start(eid):
    ddb.put_item(TableName=TABLE, Item={
        "execution_id": {"S": eid}, "seq": {"N": "0"}, "client_id": {"S": "bench"},
        "flow_id": {"S": FLOW}, "input": {"M": {"n": {"N": "1"}}}})


def ended(ids):
    """The summaries of `ids` that are no longer RUNNING."""
    out = []
    ids = list(ids)
    for i in range(0, len(ids), 100):
        keys = [{"execution_id": {"S": e}} for e in ids[i:i + 100]]
        while keys:
            r = ddb.batch_get_item(RequestItems={EXECUTIONS: {"Keys": keys, "ConsistentRead": True}})
            out += [it for it in r["Responses"].get(EXECUTIONS, []) if it["status"]["S"] != "RUNNING"]
            keys = r.get("UnprocessedKeys", {}).get(EXECUTIONS, {}).get("Keys", [])
    return out


def ts(item, name):
    return datetime.fromisoformat(item[name]["S"].replace("Z", "+00:00")).timestamp()


def hop_ms(item):
    steps = int(item["steps_total"]["N"])
    return (ts(item, "finished_at") - ts(item, "started_at")) * 1000 / max(steps - 1, 1)


def idle(n):
    hops = []
    for _ in range(n):
        eid = f"bench:idle-{uuid.uuid4()}"
        start(eid)
        deadline = time.time() + 120
        while True:
            got = ended([eid])
            if got:
                hops.append(hop_ms(got[0]))
                break
            if time.time() > deadline:
                raise SystemExit(f"idle execution {eid} did not finish")
            time.sleep(0.05)
    return hops


def load(in_flight, seconds, ramp=10.0):
    pool = concurrent.futures.ThreadPoolExecutor(8)
    flying = {}  # id -> the bench's start time
    done = []  # (bench start, bench end, summary)
    failed = []
    t0 = time.time()
    window_end = t0 + seconds

    def launch(k):
        ids = [f"bench:load-{uuid.uuid4()}" for _ in range(k)]
        now = time.time()
        list(pool.map(start, ids))
        for e in ids:
            flying[e] = now

    launch(in_flight)
    while flying:
        now = time.time()
        if now > window_end + 300:
            raise SystemExit(f"{len(flying)} executions still running 300 s after the window")
        finished = ended(flying)
        now = time.time()
        for it in finished:
            eid = it["execution_id"]["S"]
            began = flying.pop(eid)
            if it["status"]["S"] != "DONE":
                failed.append({"id": eid, "status": it["status"]["S"],
                               "reason": it.get("reason", {}).get("S")})
            done.append((began, now, it))
        if now < window_end and len(flying) < in_flight:
            launch(in_flight - len(flying))
        time.sleep(0.5)  # the polling is itself load on the stack: kept light
    pool.shutdown()
    steady = [d for d in done if t0 + ramp <= ts(d[2], "finished_at") <= window_end]
    hops = [hop_ms(d[2]) for d in done if ts(d[2], "started_at") >= t0 + ramp]
    return {
        "executions": len(done),
        "failed": failed[:10],
        "failed_count": len(failed),
        "executions_per_sec": round(len(steady) / max(seconds - ramp, 1), 1),
        "hop_ms": {"p50": round(pct(hops, 50), 1), "p90": round(pct(hops, 90), 1),
                   "p99": round(pct(hops, 99), 1), "n": len(hops)},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--in-flight", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rules", type=int, default=5)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--parallelization-factor", type=int, default=0)
    a = ap.parse_args()
    ensure_trigger_table(ddb, TABLE)
    register_chain(a.rules, FLOW)
    runner = start_runner(a.parallelization_factor)
    try:
        time.sleep(2)
        idle(1)  # warm-up: the flow into the container's cache
        quiet = idle(a.idle)
        busy = load(a.in_flight, a.seconds)
    finally:
        runner.terminate()
        runner.wait(timeout=10)
    idle_p50 = pct(quiet, 50)
    result = {
        "rules": a.rules,
        "in_flight": a.in_flight,
        "seconds": a.seconds,
        "parallelization_factor": a.parallelization_factor or "template",
        "idle_hop_ms": {"p50": round(idle_p50, 1), "p90": round(pct(quiet, 90), 1), "n": len(quiet)},
        "load": busy,
        "p99_over_idle_p50": round(busy["hop_ms"]["p99"] / idle_p50, 2),
        "goal_p99_le_2x_idle_p50": busy["hop_ms"]["p99"] <= 2 * idle_p50,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
