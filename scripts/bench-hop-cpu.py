#!/usr/bin/env python3
"""The orchestrator's CPU per record, in the binary you give it (BENCHMARKS.md, "The hop").

    source localstack/env.sh
    "$RULESTREAM_PY" scripts/bench-hop-cpu.py --bin PATH/TO/orchestrator [--executions 50] \\
        [--rules 10] [--batch 1] [--perf perf.data] [--callgrind callgrind.out]

Needs the local stack up and provisioned (`make demo` or scripts/bench-stack.sh): the binary
talks to it with the local stack's configuration (localstack/.state/lambda.env). The binary is
run as Lambda runs a custom runtime, against a stub Runtime API on 127.0.0.1 that hands it one
stream event at a time, each carrying `--batch` INSERT records built as runner.py builds them
(one per execution run side by side: 1 is an idle chain, 100 a busy shard). Each execution of a
flow of `--rules` `when` rules starts with a seq 0 row; every next row the
orchestrator writes into the table `<prefix>-trigger-cpu` (no runner reads it) is read back
and handed over as the next event, until the execution ends. Only the function's own process
is measured: utime + stime from /proc over the measured executions (the first one, which loads
the flow, is not measured), divided by the records. With --perf, `perf record -g` samples the
process meanwhile (give it a build with symbols: see BENCHMARKS.md; PERF_CALLGRAPH=dwarf records
whole stacks, the default is frame pointers). With --callgrind, the binary runs under valgrind's
callgrind, instrumented only over the measured executions: the instructions per record (the
figure that does not drift with the machine's load) and a profile for callgrind_annotate
(inclusive costs, whole call chains); CPU time is then valgrind's and not reported.
"""
import argparse
import http.server
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "localstack"))
from bench_hops import pct, register_chain  # noqa: E402
from provision import ensure_trigger_table  # noqa: E402
import runner  # noqa: E402
from function_env import env_from  # noqa: E402  (scripts/function_env.py)

PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")
TABLE = f"{PREFIX}-trigger-cpu"
FLOW = "cpu"
ddb = boto3.client("dynamodb")

EVENTS: "queue.Queue[bytes]" = queue.Queue()
ANSWERS: "queue.Queue[tuple[str, bytes]]" = queue.Queue()


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        if not self.path.endswith("/runtime/invocation/next"):
            self.send_error(404)
            return
        body = EVENTS.get()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", str(uuid.uuid4()))
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30_000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                         "arn:aws:lambda:us-east-1:000000000000:function:orchestrator")
        self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        ANSWERS.put(("error" if self.path.endswith("/error") else "ok", body))

    def log_message(self, *args):
        pass


def cpu_secs(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def deliver(items, stream_arn, counter):
    recs = []
    for item in items:
        counter[0] += 1
        recs.append({"eventID": uuid.uuid4().hex, "eventName": "INSERT",
                     "dynamodb": {"ApproximateCreationDateTime": time.time(),
                                  "Keys": {"execution_id": item["execution_id"], "seq": item["seq"]},
                                  "NewImage": item, "SequenceNumber": f"{counter[0]:021d}",
                                  "SizeBytes": 100, "StreamViewType": "NEW_IMAGE"}})
    EVENTS.put(json.dumps({"Records": [runner.event_record(r, stream_arn, "us-east-1")
                                       for r in recs]}).encode())
    kind, body = ANSWERS.get(timeout=60)
    if kind != "ok" or b'"itemIdentifier"' in body:
        raise SystemExit(f"the function failed a record: {body[:300]!r}")


def executions(n, stream_arn, counter):
    """`n` executions side by side: each event carries the current row of each of them, as a
    shard's batch does under load. Returns the records delivered."""
    items = [{"execution_id": {"S": f"bench:cpu-{uuid.uuid4()}"}, "seq": {"N": "0"},
              "client_id": {"S": "bench"}, "flow_id": {"S": FLOW},
              "input": {"M": {"n": {"N": "1"}}}} for _ in range(n)]
    records = 0
    while items:
        deliver(items, stream_arn, counter)
        records += len(items)
        keys = [{"execution_id": it["execution_id"], "seq": {"N": str(int(it["seq"]["N"]) + 1)}}
                for it in items]
        got = ddb.batch_get_item(RequestItems={TABLE: {"Keys": keys, "ConsistentRead": True}})
        items = got["Responses"].get(TABLE, [])
        if got.get("UnprocessedKeys"):
            raise SystemExit("BatchGetItem left keys unprocessed")
    return records


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--executions", type=int, default=50)
    ap.add_argument("--rules", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1,
                    help="executions run side by side: records per event (1 = an idle chain)")
    ap.add_argument("--env-file", default=str(REPO / "localstack/.state/lambda.env"))
    ap.add_argument("--perf", help="write a perf profile of the function here")
    ap.add_argument("--callgrind", help="run the function under callgrind, write its profile here")
    a = ap.parse_args()
    ensure_trigger_table(ddb, TABLE)
    stream_arn = ddb.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    register_chain(a.rules, FLOW)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(env_from(a.env_file), AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
               AWS_LAMBDA_FUNCTION_NAME="orchestrator", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
               AWS_LAMBDA_FUNCTION_VERSION="$LATEST", AWS_LAMBDA_LOG_FORMAT="JSON",
               RULESTREAM_TRIGGER_TABLE=TABLE)
    log = open(REPO / "localstack/.state/bench-hop-cpu.log", "w")
    cmd = [a.bin]
    if a.callgrind:
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={a.callgrind}", a.bin]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    perf = None
    try:
        counter = [0]
        executions(a.batch, stream_arn, counter)  # warm-up: the flow into the cache, connections opened
        if a.callgrind:
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        if a.perf:
            perf = subprocess.Popen(["perf", "record", "--call-graph", os.environ.get("PERF_CALLGRAPH", "fp"), "-F", "4999", "-o", a.perf, "-p",
                                     str(proc.pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(1)
        cpu0, t0, records = cpu_secs(proc.pid), time.perf_counter(), 0
        walls = []
        for _ in range(max(a.executions // a.batch, 1)):
            t = time.perf_counter()
            n = executions(a.batch, stream_arn, counter)
            walls.append((time.perf_counter() - t) * 1000 / n)
            records += n
        cpu = cpu_secs(proc.pid) - cpu0
        wall = time.perf_counter() - t0
        if a.callgrind:
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            time.sleep(2)
    finally:
        if perf:
            perf.send_signal(2)
            perf.wait(timeout=30)
        proc.kill()
        proc.wait()
        server.shutdown()
    out = {
        "binary": a.bin, "bytes": Path(a.bin).stat().st_size, "executions": a.executions,
        "rules": a.rules, "batch": a.batch, "records": records,
        "cpu_us_per_record": round(cpu * 1e6 / records, 1),
        "wall_ms_per_record_p50": round(pct(walls, 50), 2),
        "wall_s": round(wall, 1),
    }
    if a.callgrind:
        del out["cpu_us_per_record"]
        dumps = sorted(Path(a.callgrind).parent.glob(Path(a.callgrind).name + "*"))
        total = 0
        for d in dumps:
            for line in d.read_text(errors="replace").splitlines():
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = max(total, int(line.split()[1]))
        out["callgrind_files"] = [str(d) for d in dumps]
        out["instructions_per_record"] = round(total / records) if total else None
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
