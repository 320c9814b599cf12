"""Local DynamoDB event source mapping: feeds a table's stream to a function served by
`cargo lambda watch`, the way AWS Lambda's DynamoDB event source mapping does.

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/runner.py --table "$RULESTREAM_PREFIX-trigger" \\
        [--function orchestrator] [--lambda-url http://127.0.0.1:$RULESTREAM_LAMBDA_PORT] \\
        [--batch-size 100] [--max-retries 5] [--duplicate] [--failures-file PATH]

What it does, as AWS does (with FunctionResponseTypes=[ReportBatchItemFailures]):

- DescribeTable -> LatestStreamArn; DescribeStream (paginated) every --describe-interval seconds to
  find shards, including child shards that appear when a shard closes. A child shard is started only
  once its parent shard has been read to its end (or the parent is no longer listed), so records of
  one key stay in order. One worker thread per shard, one batch in flight per shard.
- Each shard is read from --starting-position (TRIM_HORIZON by default) with GetRecords
  (Limit = --batch-size); when a read returns nothing the worker sleeps --poll-interval (0.2 s).
- Each non-empty read becomes one event, built exactly like the one Lambda delivers:
  {"Records": [{"eventID", "eventName", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
  "awsRegion", "dynamodb": {"ApproximateCreationDateTime": <epoch seconds>, "Keys", "NewImage",
  "SequenceNumber", "SizeBytes", "StreamViewType"}, "eventSourceARN": <stream ARN>}]}
  Attribute values stay in DynamoDB JSON ({"S": ..}); boto3's datetimes become epoch numbers and
  bytes (B, BS, also nested in M/L) become base64 strings, as in the JSON Lambda sends.
- The event is POSTed to <lambda-url>/2015-03-31/functions/<function>/invocations (the Lambda Invoke
  API). Outcomes:
    * HTTP failure, non-2xx status, an X-Amz-Function-Error header or an `errorType` in the body:
      a function error; the whole batch is retried.
    * {"batchItemFailures": [{"itemIdentifier": "<SequenceNumber>"}, ...]} with at least one entry:
      records before the lowest failed SequenceNumber are checkpointed and the shard is re-read from
      AT_SEQUENCE_NUMBER of that record (so the retried batch starts with it). An identifier that is
      empty, missing or not a SequenceNumber of the batch fails the whole batch (AWS's rule).
    * null / {} / an empty or null batchItemFailures list: success, the batch is checkpointed.
- Retries use exponential backoff (--retry-base-delay doubling up to --retry-max-delay). Like
  MaximumRetryAttempts, --max-retries counts re-deliveries after the first attempt (so at most
  1 + max-retries invocations start at the same record; -1 = retry forever). When they are used up,
  the records that failed in the last attempt (all of them for a function error) are appended to
  --failures-file (the on-failure destination; one JSON line per record) and the shard moves past
  the batch.
- --duplicate delivers every batch twice, the second time after the first returned (at-least-once
  redelivery). A record counts as processed only if neither delivery failed it: a function error
  in either delivery fails the batch, and item failures of both are merged.

Checkpoints live in memory only: a restarted runner starts again at --starting-position (the
function must be idempotent anyway, as on AWS). One JSON line per batch goes to stdout (shard,
records, first/last sequence number, attempt, duration_ms, failures, status); other events
(shard started/finished, gave up, errors) are JSON lines too. SIGTERM / SIGINT stop it cleanly.
Only 127.0.0.1 is contacted: the AWS endpoint from env.sh and the --lambda-url given.
"""

import argparse
import base64
import datetime
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

STOP = threading.Event()  # set by SIGTERM / SIGINT; every wait in here watches it
_LOG_LOCK = threading.Lock()
_FAILURES_LOCK = threading.Lock()


def log(event, **fields):
    """One JSON line on stdout (flushed: the runner usually writes to a log file)."""
    line = json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str)
    with _LOG_LOCK:
        print(line, flush=True)


def seq_key(seq):
    """DynamoDB Streams sequence numbers are decimal strings; compare them as integers."""
    return int(seq)


# --- building the event exactly like Lambda -------------------------------------------------------

def to_epoch(value):
    """boto3 parses ApproximateCreationDateTime into a datetime; Lambda sends epoch seconds."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        ts = value.timestamp()
        return int(ts) if ts == int(ts) else ts
    return value


def wire_attr(value):
    """One attribute value as it travels in JSON: bytes (B, BS, nested anywhere) as base64."""
    (kind, inner), = value.items()
    if kind == "B":
        return {"B": base64.b64encode(inner).decode("ascii")}
    if kind == "BS":
        return {"BS": [base64.b64encode(b).decode("ascii") for b in inner]}
    if kind == "M":
        return {"M": {k: wire_attr(v) for k, v in inner.items()}}
    if kind == "L":
        return {"L": [wire_attr(v) for v in inner]}
    return {kind: inner}  # S, N, BOOL, NULL, SS, NS are already JSON-ready


def wire_item(item):
    return {k: wire_attr(v) for k, v in item.items()}


def event_record(rec, stream_arn, region):
    """A GetRecords record -> the record Lambda puts in the event (same fields, same order)."""
    src = rec["dynamodb"]
    ddb = {}
    if "ApproximateCreationDateTime" in src:
        ddb["ApproximateCreationDateTime"] = to_epoch(src["ApproximateCreationDateTime"])
    for image in ("Keys", "NewImage", "OldImage"):
        if image in src:
            ddb[image] = wire_item(src[image])
    for field in ("SequenceNumber", "SizeBytes", "StreamViewType"):
        if field in src:
            ddb[field] = src[field]
    out = {
        "eventID": rec["eventID"],
        "eventName": rec["eventName"],
        "eventVersion": rec.get("eventVersion", "1.1"),
        "eventSource": rec.get("eventSource", "aws:dynamodb"),
        "awsRegion": rec.get("awsRegion", region),
        "dynamodb": ddb,
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in rec:  # present on TTL deletions
        out["userIdentity"] = rec["userIdentity"]
    return out


# --- invoking the function -------------------------------------------------------------------------

class Invoker:
    """POSTs events to the Lambda Invoke API and classifies the answer."""

    def __init__(self, lambda_url, function, timeout):
        self.url = f"{lambda_url.rstrip('/')}/2015-03-31/functions/{function}/invocations"
        self.timeout = timeout
        # No proxies, ever: the function runs on 127.0.0.1.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def invoke(self, event, batch_seqs):
        """Returns (status, failed_seqs, detail): status is "ok", "partial" or "error"."""
        body = json.dumps(event).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                code, headers, payload = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:  # non-2xx: the function (or the emulator) failed
            return "error", list(batch_seqs), f"HTTP {e.code}: {e.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as e:
            return "error", list(batch_seqs), f"invoke failed: {e}"
        if headers.get("X-Amz-Function-Error"):
            return "error", list(batch_seqs), f"function error: {payload[:300]!r}"
        text = payload.decode("utf-8", "replace").strip()
        if not text or text == "null":
            return "ok", [], ""  # an empty / null response is a complete success
        try:
            answer = json.loads(text)
        except ValueError:
            return "error", list(batch_seqs), f"response is not JSON: {text[:300]!r}"
        if isinstance(answer, dict) and "errorType" in answer:
            return "error", list(batch_seqs), f"function error: {text[:300]}"
        items = answer.get("batchItemFailures") if isinstance(answer, dict) else None
        if not items:
            return "ok", [], ""
        failed = []
        known = set(batch_seqs)
        for item in items:
            ident = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(ident, str) or ident not in known:
                # AWS: an empty/null/unknown identifier or a bad key name fails the whole batch.
                return "error", list(batch_seqs), f"invalid batchItemFailures entry {item!r}"
            failed.append(ident)
        return "partial", sorted(set(failed), key=seq_key), ""


# --- one shard -------------------------------------------------------------------------------------

class ShardWorker(threading.Thread):
    """Reads one shard in order and delivers its batches, one at a time, with retries."""

    def __init__(self, runner, stream_arn, shard_id):
        super().__init__(name=f"shard-{shard_id[-12:]}", daemon=True)
        self.r = runner
        self.stream_arn = stream_arn
        self.shard_id = shard_id
        # Where to (re)open the shard: (ShardIteratorType, SequenceNumber or None). It is moved
        # forward on every checkpoint, so any error can reopen the shard at the right place.
        self.position = (runner.args.starting_position, None)
        self.iterator = None
        # Retry state: the sequence number a failing batch starts at and how many invocations have
        # started at it so far.
        self.retry_head = None
        self.retry_attempts = 0
        self.finished = False  # read to its end (closed shard) or gone

    # -- shard iterators --
    def open_iterator(self):
        kind, seq = self.position
        args = dict(StreamArn=self.stream_arn, ShardId=self.shard_id, ShardIteratorType=kind)
        if seq is not None:
            args["SequenceNumber"] = seq
        self.iterator = self.r.streams.get_shard_iterator(**args)["ShardIterator"]

    def run(self):
        log("shard_started", shard=self.shard_id, position=self.position[0])
        try:
            self.loop()
        finally:
            log("shard_stopped", shard=self.shard_id, finished=self.finished)

    def loop(self):
        while not STOP.is_set() and not self.finished:
            try:
                if self.iterator is None:
                    self.open_iterator()
                out = self.r.streams.get_records(ShardIterator=self.iterator,
                                                 Limit=self.r.args.batch_size)
            except ClientError as e:
                code = e.response["Error"]["Code"]
                if code == "ExpiredIteratorException":
                    self.iterator = None  # reopen at self.position
                    continue
                if code == "TrimmedDataAccessException":
                    # Our position fell off the 24 h retention window: AWS skips to the oldest data.
                    log("shard_trimmed", shard=self.shard_id, position=self.position)
                    self.position, self.iterator = ("TRIM_HORIZON", None), None
                    continue
                if code == "ResourceNotFoundException":
                    log("shard_gone", shard=self.shard_id, error=str(e))
                    self.finished = True
                    return
                log("shard_error", shard=self.shard_id, error=str(e))
                self.iterator = None
                STOP.wait(1.0)
                continue
            except BotoCoreError as e:  # connection refused, timeouts...
                log("shard_error", shard=self.shard_id, error=str(e))
                self.iterator = None
                STOP.wait(1.0)
                continue

            records, next_it = out.get("Records", []), out.get("NextShardIterator")
            if not records:
                if next_it is None:  # a closed shard read to its end
                    self.finished = True
                    return
                self.iterator = next_it
                STOP.wait(self.r.args.poll_interval)
                continue
            try:
                self.deliver(records, next_it)
            except Exception as e:  # a bug here must not lose records: reopen and redeliver
                log("deliver_error", shard=self.shard_id, error=repr(e))
                self.iterator = None
                STOP.wait(1.0)

    # -- one batch --
    def deliver(self, records, next_it):
        """Invokes the function with one batch and moves the shard position accordingly."""
        args = self.r.args
        seqs = [rec["dynamodb"]["SequenceNumber"] for rec in records]
        head = seqs[0]
        attempt = self.retry_attempts + 1 if head == self.retry_head else 1
        event = {"Records": [event_record(rec, self.stream_arn, self.r.region) for rec in records]}

        t0 = time.monotonic()
        status, failed, detail = self.r.invoker.invoke(event, seqs)
        deliveries = 1
        if args.duplicate and not STOP.is_set():
            # At-least-once: the same batch again, after the first delivery returned.
            status2, failed2, detail2 = self.r.invoker.invoke(event, seqs)
            deliveries = 2
            if "error" in (status, status2):
                status = "error"
                failed = list(seqs)
                detail = detail if detail else detail2
            elif "partial" in (status, status2):
                status = "partial"
                failed = sorted(set(failed) | set(failed2), key=seq_key)
        duration_ms = round((time.monotonic() - t0) * 1000, 1)

        base = dict(shard=self.shard_id, records=len(records), first_seq=head, last_seq=seqs[-1],
                    attempt=attempt, deliveries=deliveries, duration_ms=duration_ms,
                    failures=len(failed))
        if status == "ok":
            log("batch", status="ok", **base)
            self.checkpoint_after(seqs[-1], next_it)
            return

        # Function error: the whole batch is retried from its first record. Item failures:
        # everything before the lowest failed record is checkpointed, the retry starts there.
        resume = head if status == "error" else failed[0]
        log("batch", status=status, resume_at=resume, error=detail or None, **base)
        if resume == head:
            self.retry_head, self.retry_attempts = head, attempt
        else:
            # Progress: the new head was tried once already (in this batch) and failed.
            self.retry_head, self.retry_attempts = resume, 1

        if args.max_retries >= 0 and self.retry_attempts > args.max_retries:
            # Retries used up: hand the failed records to the on-failure destination and move on.
            by_seq = dict(zip(seqs, event["Records"]))
            self.r.write_failures(self.shard_id, [by_seq[s] for s in failed],
                                  attempts=self.retry_attempts, status=status, detail=detail)
            log("gave_up", shard=self.shard_id, records=len(failed), first_seq=failed[0],
                last_seq=failed[-1], attempts=self.retry_attempts,
                failures_file=args.failures_file)
            self.checkpoint_after(seqs[-1], next_it)
            return

        delay = min(args.retry_base_delay * (2 ** (self.retry_attempts - 1)), args.retry_max_delay)
        STOP.wait(delay)
        # Re-read the shard from the first record to retry (AT_SEQUENCE_NUMBER).
        self.position, self.iterator = ("AT_SEQUENCE_NUMBER", resume), None

    def checkpoint_after(self, last_seq, next_it):
        self.position = ("AFTER_SEQUENCE_NUMBER", last_seq)
        self.retry_head, self.retry_attempts = None, 0
        if next_it is None:  # the shard closed and this was its last batch
            self.finished = True
        self.iterator = next_it


# --- the mapping -----------------------------------------------------------------------------------

class Runner:
    def __init__(self, args):
        self.args = args
        session = boto3.session.Session()
        self.region = session.region_name or "us-east-1"
        cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                     read_timeout=30)
        self.ddb = session.client("dynamodb", config=cfg)
        self.streams = session.client("dynamodbstreams", config=cfg)
        self.invoker = Invoker(args.lambda_url, args.function, args.invoke_timeout)
        self.workers = {}  # (stream ARN, shard id) -> ShardWorker
        self.stream_arn = None

    def write_failures(self, shard_id, records, attempts, status, detail):
        if not self.args.failures_file:
            return
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        with _FAILURES_LOCK, open(self.args.failures_file, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps({
                    "time": now, "table": self.args.table, "function": self.args.function,
                    "stream_arn": rec["eventSourceARN"], "shard": shard_id,
                    "sequence_number": rec["dynamodb"]["SequenceNumber"], "attempts": attempts,
                    "reason": "function_error" if status == "error" else "batch_item_failure",
                    "detail": detail or None, "record": rec}) + "\n")

    def current_stream(self):
        """LatestStreamArn of the table, or None while the table (or its stream) does not exist."""
        try:
            return self.ddb.describe_table(TableName=self.args.table)["Table"].get("LatestStreamArn")
        except ClientError as e:
            if e.response["Error"]["Code"] == "ResourceNotFoundException":
                return None
            raise

    def list_shards(self, arn):
        shards, start = [], None
        while True:
            kw = {"StreamArn": arn}
            if start:
                kw["ExclusiveStartShardId"] = start
            desc = self.streams.describe_stream(**kw)["StreamDescription"]
            shards.extend(desc.get("Shards", []))
            start = desc.get("LastEvaluatedShardId")
            if not start:
                return shards

    def refresh(self):
        """Finds the stream and its shards; starts a worker for each shard that may be read now."""
        arn = self.current_stream()
        if arn != self.stream_arn:
            log("stream", table=self.args.table, stream_arn=arn)
            self.stream_arn = arn  # a re-created table gets a new stream: follow it
        if not arn:
            return
        shards = self.list_shards(arn)
        listed = {s["ShardId"] for s in shards}
        for s in shards:
            key = (arn, s["ShardId"])
            if key in self.workers:
                continue
            parent = s.get("ParentShardId")
            if parent and parent in listed:
                pw = self.workers.get((arn, parent))
                if pw is None or not pw.finished:
                    continue  # the child waits until its parent has been read to its end
            w = ShardWorker(self, arn, s["ShardId"])
            self.workers[key] = w
            w.start()

    def run(self):
        log("runner_started", table=self.args.table, function=self.args.function,
            url=self.invoker.url, batch_size=self.args.batch_size,
            max_retries=self.args.max_retries, duplicate=self.args.duplicate,
            failures_file=self.args.failures_file)
        waiting_logged = False
        while not STOP.is_set():
            try:
                self.refresh()
                if not self.stream_arn and not waiting_logged:
                    log("waiting", table=self.args.table, reason="no such table or no stream")
                    waiting_logged = True
            except (ClientError, BotoCoreError) as e:
                log("describe_error", error=str(e))
            STOP.wait(self.args.describe_interval)
        # Let in-flight batches finish for a moment; workers are daemon threads, so a batch still
        # waiting on the function does not keep the process alive (it will be redelivered).
        deadline = time.monotonic() + self.args.shutdown_grace
        for w in list(self.workers.values()):
            w.join(max(0.0, deadline - time.monotonic()))
        log("runner_stopped", table=self.args.table)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    port = os.environ.get("RULESTREAM_LAMBDA_PORT", "9000")
    p.add_argument("--table", required=True, help="table whose stream is read")
    p.add_argument("--function", default="orchestrator", help="function name (the binary name)")
    p.add_argument("--lambda-url", default=f"http://127.0.0.1:{port}",
                   help="Lambda Invoke API base URL (default http://127.0.0.1:$RULESTREAM_LAMBDA_PORT)")
    p.add_argument("--batch-size", type=int, default=100, help="GetRecords Limit (1-1000)")
    p.add_argument("--max-retries", type=int, default=5,
                   help="re-deliveries of a failing batch after the first attempt; -1 = forever")
    p.add_argument("--duplicate", action="store_true",
                   help="deliver every batch twice (at-least-once redelivery)")
    p.add_argument("--failures-file", help="on-failure destination: JSON lines of given-up records")
    p.add_argument("--starting-position", default="TRIM_HORIZON", choices=["TRIM_HORIZON", "LATEST"])
    p.add_argument("--poll-interval", type=float, default=0.2, help="sleep after an empty read (s)")
    p.add_argument("--describe-interval", type=float, default=3.0, help="DescribeStream period (s)")
    p.add_argument("--retry-base-delay", type=float, default=0.2, help="first retry backoff (s)")
    p.add_argument("--retry-max-delay", type=float, default=5.0, help="backoff cap (s)")
    p.add_argument("--invoke-timeout", type=float, default=300.0, help="HTTP timeout per invoke (s)")
    p.add_argument("--shutdown-grace", type=float, default=5.0,
                   help="on SIGTERM, wait this long for in-flight batches (s)")
    args = p.parse_args(argv)
    if not 1 <= args.batch_size <= 1000:
        p.error("--batch-size must be 1..1000 (the DynamoDB Streams GetRecords limit)")
    if args.max_retries < -1:
        p.error("--max-retries must be -1 (forever) or >= 0")
    return args


def main():
    args = parse_args()

    def stop(signum, _frame):
        log("signal", signal=signal.Signals(signum).name)
        STOP.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    Runner(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
