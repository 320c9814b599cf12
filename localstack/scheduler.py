"""Local EventBridge schedule: invokes the `sweeper` function every RULESTREAM_SWEEP_INTERVAL_SECS
(default 60; on AWS the rule is rate(1 minute)) through the Lambda Invoke API of `cargo lambda
watch`, with the payload EventBridge sends to a scheduled target.

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/scheduler.py [--function sweeper] [--interval SECS]
        [--lambda-url http://127.0.0.1:$RULESTREAM_LAMBDA_PORT] [--once] [--print-event]

- Every tick POSTs to <lambda-url>/2015-03-31/functions/<function>/invocations the event
  {"version": "0", "id": <uuid4>, "detail-type": "Scheduled Event", "source": "aws.events",
   "account": <AWS_ACCOUNT_ID or 000000000000>, "time": <UTC, seconds, Z>, "region": <AWS_REGION>,
   "resources": ["arn:aws:events:<region>:<account>:rule/<prefix>-sweeper"], "detail": {}}.
- Ticks are on a fixed grid (start + k * interval), one invocation at a time; a tick that falls
  while the previous invocation still runs is skipped (logged), so a slow sweep never piles up.
  The first tick comes one interval after the start (as with a new EventBridge rule).
- One JSON line per tick on stdout: {"ts", "event": "tick", "function", "status" (HTTP status, or
  null when the request failed), "ok", "duration_ms", "error"?, "response"? (the first 300 bytes
  of the function's answer)}. A failed invocation is logged and the schedule goes on (EventBridge
  does not stop a rule because its target failed).
- SIGTERM / SIGINT: exits at once with status 0 (an invocation in flight is abandoned, as a
  stopped scheduler would; the sweeper is idempotent).
- --once: one invocation now, exit status 0 if it succeeded, 1 otherwise. --print-event: print
  one event and exit (lambda.sh uses it for the sweeper's warm-up).
Only 127.0.0.1 is contacted (the --lambda-url given); no proxies.
"""

import argparse
import datetime
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

STOP = threading.Event()


def log(event, **fields):
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str), flush=True)


def scheduled_event(now=None):
    """The JSON EventBridge delivers to a target of a schedule rule."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    account = os.environ.get("AWS_ACCOUNT_ID") or "000000000000"  # LocalStack's account for "test"
    prefix = os.environ.get("RULESTREAM_PREFIX", "rulestream")
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{prefix}-sweeper"],
        "detail": {},
    }


def invoke(url, timeout):
    """One invocation; returns the fields of its log line."""
    body = json.dumps(scheduled_event()).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: no proxies
    t0 = time.monotonic()
    out = {"status": None, "ok": False}
    try:
        with opener.open(req, timeout=timeout) as resp:
            payload = resp.read()
            out["status"] = resp.status
            func_error = resp.headers.get("X-Amz-Function-Error")
        text = payload.decode("utf-8", "replace").strip()
        if text:
            out["response"] = text[:300]
        if func_error or '"errorType"' in text:
            out["error"] = f"function error{f' ({func_error})' if func_error else ''}"
        else:
            out["ok"] = 200 <= resp.status < 300
    except urllib.error.HTTPError as e:
        out["status"] = e.code
        out["error"] = f"HTTP {e.code}: {e.read()[:300]!r}"
    except (urllib.error.URLError, OSError) as e:
        out["error"] = f"invoke failed: {e}"
    out["duration_ms"] = round((time.monotonic() - t0) * 1000, 1)
    return out


def tick(args, url):
    fields = invoke(url, args.invoke_timeout)
    if not STOP.is_set():
        log("tick", function=args.function, **fields)
    return fields["ok"]


def run(args, url):
    log("scheduler_started", function=args.function, url=url, interval_s=args.interval)
    start = time.monotonic()
    k = 1
    worker = None
    while not STOP.wait(max(0.0, start + k * args.interval - time.monotonic())):
        if worker is not None and worker.is_alive():
            log("tick_skipped", function=args.function, reason="previous invocation still running")
        else:
            # In a thread, so SIGTERM is answered at once even while an invocation waits.
            worker = threading.Thread(target=tick, args=(args, url), daemon=True)
            worker.start()
        k = max(k + 1, int((time.monotonic() - start) // args.interval) + 1)
    log("scheduler_stopped", function=args.function)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    port = os.environ.get("RULESTREAM_LAMBDA_PORT", "9000")
    p.add_argument("--function", default="sweeper", help="function name (the binary name)")
    p.add_argument("--lambda-url", default=f"http://127.0.0.1:{port}",
                   help="Lambda Invoke API base URL (default http://127.0.0.1:$RULESTREAM_LAMBDA_PORT)")
    p.add_argument("--interval", type=float,
                   default=float(os.environ.get("RULESTREAM_SWEEP_INTERVAL_SECS") or 60),
                   help="seconds between ticks (default $RULESTREAM_SWEEP_INTERVAL_SECS or 60)")
    p.add_argument("--invoke-timeout", type=float, default=300.0, help="HTTP timeout per invoke (s)")
    p.add_argument("--once", action="store_true", help="one invocation now, then exit")
    p.add_argument("--print-event", action="store_true", help="print one scheduled event and exit")
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error("--interval must be > 0")
    return args


def main():
    args = parse_args()
    if args.print_event:
        print(json.dumps(scheduled_event()))
        return 0
    url = f"{args.lambda_url.rstrip('/')}/2015-03-31/functions/{args.function}/invocations"

    def stop(signum, _frame):
        log("signal", signal=signal.Signals(signum).name)
        STOP.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.once:
        return 0 if tick(args, url) else 1
    run(args, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
