"""The live part of `make demo`: runs every example of client-configs/examples/ through the real
orchestrator on the local stack and checks each reaches its expected status.

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/demo.py [--timeout 120] [--only TEXT] [--configs DIR]

Needs the stack up, provisioned and seeded (up.sh, provision.py, seed.py), the orchestrator served
by `localstack/lambda.sh start`, and runner.py feeding it the `<prefix>-trigger` stream
(scripts/demo.sh does all of that).

1. Every case of client-configs/examples/<client>.<flow>.json ({name, input, now, expect_status,
   expect_path}) becomes one execution. The orchestrator evaluates with the real current time, so
   every RFC 3339 timestamp inside the input is shifted by (real now - the case's `now`): blackout
   windows, last-trade dates... keep their distance to "now" and the expectations still hold.
2. Each is started the way a client process starts one: a PutItem of {execution_id:
   "<client_id>:<uuid4>" (SPEC section 3: the id carries its client), seq: 0, client_id, flow_id,
   input} into `<prefix>-trigger`.
3. `<prefix>-executions` is polled (consistent BatchGetItem) until every execution has a status
   other than RUNNING, or --timeout seconds pass.
4. A table: execution id (the first 8 characters after `<client_id>:`), client, flow, version,
   status, expected, steps (the summary's `steps_total`), duration (ms: finished_at - started_at;
   e2e ms: finished_at - when the trigger row was written), whether the trace's rule path matches
   the example's expect_path (informational), and the case name. Exit status 1 if any execution
   did not reach its expected status, else 0.
"""

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

REPO = Path(__file__).resolve().parent.parent
RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_ser, _de = TypeSerializer(), TypeDeserializer()


def parse_ts(text):
    """RFC 3339 -> aware datetime, or None. Fractions beyond microseconds are cut."""
    m = RFC3339.match(text) if isinstance(text, str) else None
    if not m:
        return None
    date, clock, frac, off = m.groups()
    frac = (frac or "")[:7]
    off = "+00:00" if off in ("Z", "z") else off
    try:
        return dt.datetime.fromisoformat(f"{date}T{clock}{frac}{off}")
    except ValueError:
        return None


def format_like(original, value):
    """`value` written the way `original` was (same offset, Z kept, fraction only if it had one)."""
    m = RFC3339.match(original)
    frac, off = m.group(3), m.group(4)
    value = value.astimezone(parse_ts(original).tzinfo)
    text = value.isoformat(timespec="milliseconds" if frac else "seconds")
    if off in ("Z", "z") and text.endswith("+00:00"):
        text = text[:-6] + "Z"
    return text


def shift_times(obj, delta):
    """A copy of `obj` with every RFC 3339 timestamp string moved by `delta`."""
    if isinstance(obj, dict):
        return {k: shift_times(v, delta) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shift_times(v, delta) for v in obj]
    ts = parse_ts(obj)
    return format_like(obj, ts + delta) if ts else obj


def load_cases(configs, only):
    """[(client_id, flow_id, flow file version, case)] from examples/<client>.<flow>.json."""
    cases = []
    for path in sorted((configs / "examples").glob("*.json")):
        client_id, _, flow_id = path.stem.partition(".")
        flow_path = configs / client_id / f"{flow_id}.json"
        if not flow_id or not flow_path.is_file():
            print(f"demo: skipping {path.name}: no flow file {flow_path.relative_to(configs)}")
            continue
        version = json.loads(flow_path.read_text())["version"]
        for case in json.loads(path.read_text(), parse_float=Decimal):
            label = f"{client_id}/{flow_id}: {case['name']}"
            if only and only.lower() not in label.lower():
                continue
            cases.append({"client_id": client_id, "flow_id": flow_id, "file_version": version,
                          **case})
    return cases


def plain(item):
    return {k: _de.deserialize(v) for k, v in item.items()}


def duration_ms(item, start=None):
    """finished_at - started_at (or - `start`, e.g. when the trigger row was written), in ms."""
    a, b = start or parse_ts(item.get("started_at")), parse_ts(item.get("finished_at"))
    return round((b - a).total_seconds() * 1000) if a and b else None


def blank_none(v):
    return "" if v is None else str(v)


def short_id(execution_id):
    """The first 8 characters of the unique part of `<client_id>:<unique>`."""
    return execution_id.partition(":")[2][:8] or execution_id[:8]


def step_count(item):
    """Steps of an ended execution: `steps_total` of the summary (the trace may be cut past its
    size bound), else the trace's length (or `step` of summaries written by older versions)."""
    for field in ("steps_total", "step"):
        if item.get(field) is not None:
            return item[field]
    trace = item.get("trace")
    return len(trace) if isinstance(trace, list) else None


def trace_path(item):
    trace = item.get("trace")
    if not isinstance(trace, list) or not all(isinstance(t, dict) and "rule" in t for t in trace):
        return None
    return [t["rule"] for t in trace]


def main():
    p = argparse.ArgumentParser(description="Run the examples through the live orchestrator.")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all (120)")
    p.add_argument("--only", help="only cases whose 'client/flow: name' contains this text")
    p.add_argument("--configs", type=Path, default=REPO / "client-configs")
    p.add_argument("--poll-interval", type=float, default=0.5)
    args = p.parse_args()

    prefix = os.environ.get("RULESTREAM_PREFIX", "rulestream")
    trigger, executions = f"{prefix}-trigger", f"{prefix}-executions"
    ddb = boto3.client("dynamodb")
    cases = load_cases(args.configs, args.only)
    if not cases:
        sys.exit("demo: no cases")

    # 1-2. Start every execution, inputs shifted to the real current time.
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    print(f"demo: starting {len(cases)} executions in {trigger} (now {now.isoformat()})")
    t_start = time.monotonic()
    for c in cases:
        case_now = parse_ts(c["now"])
        c["input_live"] = shift_times(c["input"], now - case_now) if case_now else c["input"]
        c["execution_id"] = f"{c['client_id']}:{uuid.uuid4()}"
        row = {"execution_id": c["execution_id"], "seq": 0, "client_id": c["client_id"],
               "flow_id": c["flow_id"], "input": c["input_live"]}
        c["put_at"] = dt.datetime.now(dt.timezone.utc)
        ddb.put_item(TableName=trigger, Item={k: _ser.serialize(v) for k, v in row.items()})

    # 3. Poll the executions table until no execution is RUNNING (or missing) any more.
    by_id = {c["execution_id"]: c for c in cases}
    results = {}
    pending = set(by_id)
    tty = sys.stdout.isatty()
    last_line = None
    deadline = time.monotonic() + args.timeout
    while True:
        ids = sorted(pending)
        for i in range(0, len(ids), 100):
            keys = [{"execution_id": {"S": e}} for e in ids[i:i + 100]]
            out = ddb.batch_get_item(RequestItems={executions: {"Keys": keys, "ConsistentRead": True}})
            for raw in out["Responses"].get(executions, []):
                item = plain(raw)
                results[item["execution_id"]] = item
                if item.get("status") not in (None, "RUNNING"):
                    pending.discard(item["execution_id"])
        done = len(cases) - len(pending)
        line = f"demo: {done}/{len(cases)} finished ({time.monotonic() - t_start:.1f}s)"
        if tty:
            print("\r" + line, end="", flush=True)
        elif line.split(" (")[0] != last_line:
            print(line, flush=True)
            last_line = line.split(" (")[0]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(args.poll_interval)
    if tty:
        print()
    wall = time.monotonic() - t_start

    # 4. The table.
    head = ["execution", "client", "flow", "ver", "status", "expected", "", "steps", "ms", "e2e ms",
            "path", "case"]
    rows, bad = [], []
    for c in cases:
        item = results.get(c["execution_id"], {})
        status = item.get("status", "(none)")
        ok = status == c["expect_status"]
        path = trace_path(item)
        path_mark = "-" if path is None or not ok else ("ok" if path == c.get("expect_path") else "differs")
        rows.append([short_id(c["execution_id"]), c["client_id"], c["flow_id"],
                     str(item.get("flow_version", "")), status, c["expect_status"],
                     "ok" if ok else "XX", blank_none(step_count(item)), blank_none(duration_ms(item)),
                     blank_none(duration_ms(item, c["put_at"])), path_mark, c["name"][:60]])
        if not ok or path_mark == "differs":
            bad.append((c, item, ok))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'>' if i in (3, 7, 8, 9) else '<'}{w}}}" for i, w in enumerate(widths))
    print()
    print(fmt.format(*head))
    print(fmt.format(*["-" * w for w in widths]))
    for r in rows:
        print(fmt.format(*r))

    failed = [x for x in bad if not x[2]]
    for c, item, ok in bad:
        print(f"\n{'NOT AS EXPECTED' if not ok else 'path differs'}: {c['client_id']}/{c['flow_id']}: "
              f"{c['name']}\n  execution_id {c['execution_id']}  status {item.get('status', '(none)')}"
              f" (expected {c['expect_status']})")
        for field in ("reason", "error"):
            if item.get(field):
                print(f"  {field}: {item[field]}")
        print(f"  path {trace_path(item)}  expected {c.get('expect_path')}")
    n_ok = len(cases) - len(failed)
    print(f"\ndemo: {n_ok}/{len(cases)} executions reached their expected status "
          f"({len(pending)} unfinished) in {wall:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
