"""Local DynamoDB event source mapping: feeds a table's stream to a function served by
`cargo lambda watch`, the way AWS Lambda's DynamoDB event source mapping does.

    source localstack/env.sh
    "$RULESTREAM_PY" localstack/runner.py --table "$RULESTREAM_PREFIX-trigger" \\
        [--template template.yaml [--function-logical-id OrchestratorFunction]] \\
        [--function orchestrator] [--lambda-url http://127.0.0.1:$RULESTREAM_LAMBDA_PORT] \\
        [--batch-size N] [--max-retries N] [--max-record-age S] [--[no-]bisect] \\
        [--function-timeout S] [--on-failure-queue-url URL | --on-failure-queue-name NAME] \\
        [--duplicate] [--failures-file PATH]

Settings. With --template, the mapping's settings are read from the SAM template: the function
resource (--function-logical-id; by default the one function with a DynamoDB event) and its one
`Type: DynamoDB` event: BatchSize, BisectBatchOnFunctionError, MaximumRetryAttempts,
MaximumRecordAgeInSeconds, ParallelizationFactor, FunctionResponseTypes, FilterCriteria,
StartingPosition, DestinationConfig.OnFailure (an SQS queue: its QueueName, ${Prefix} resolved
with --prefix / $RULESTREAM_PREFIX), the function's Timeout (its own or Globals.Function.Timeout),
FunctionName (for the functionArn of on-failure records) and Metadata.BuildProperties.Binary (the
binary `cargo lambda watch` serves). Absent properties take AWS's defaults (BatchSize 100, no
bisect, MaximumRetryAttempts and MaximumRecordAgeInSeconds -1, Timeout 3). Every command-line flag
overrides the template (tests shorten --max-record-age, --function-timeout...). Without
--template the old defaults hold: batch 100, 5 retries, no bisect, no age limit, ReportBatchItemFailures
on, a 300 s invoke timeout, no SQS destination.

What it does, as AWS does:

- DescribeTable -> LatestStreamArn; DescribeStream (paginated) every --describe-interval seconds to
  find shards, including child shards that appear when a shard closes. A child shard is started only
  once its parent shard has been read to its end and delivered (or the parent is no longer
  listed), so records of one key stay in order. One reader thread per shard. With a
  ParallelizationFactor (--parallelization-factor or the template's) of N > 1, as on AWS, up to
  N batches of one shard are delivered at a time: each record goes to one of N lanes by a hash of
  its partition key (the table's HASH key, from DescribeTable), and each lane delivers its records
  in order, one batch at a time, with everything below (retries, bisection, record age, payload
  cap) applied per lane. A failing key holds its own lane only. The reader stops reading while
  the lanes hold N x batch size records. With N = 1 the reader delivers its batches itself.
- Each shard is read from the starting position with GetRecords (Limit = batch size); when a read
  returns nothing the worker sleeps --poll-interval (0.2 s). Records that match none of the
  template's FilterCriteria patterns are dropped (checkpointed, never delivered).
- Each batch becomes one event, built exactly like the one Lambda delivers:
  {"Records": [{"eventID", "eventName", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
  "awsRegion", "dynamodb": {"ApproximateCreationDateTime": <epoch seconds>, "Keys", "NewImage",
  "SequenceNumber", "SizeBytes", "StreamViewType"}, "eventSourceARN": <stream ARN>}]}
  Attribute values stay in DynamoDB JSON ({"S": ..}); boto3's datetimes become epoch numbers and
  bytes (B, BS, also nested in M/L) become base64 strings, as in the JSON Lambda sends.
- Payload cap: an event is at most 6 MB (6,291,456 bytes, the synchronous Invoke limit). A batch
  whose event would be larger is cut: the records that fit go first, the rest follow as the next
  batch. A single record whose event exceeds the cap is not sent (Invoke would refuse it with
  413 RequestTooLargeException) and counts as a function error.
- Record age (MaximumRecordAgeInSeconds / --max-record-age, -1 = no limit): before every
  invocation, records older than the limit (by ApproximateCreationDateTime) are not delivered;
  they go to the on-failure destination with condition RecordAgeExceeded.
- The event is POSTed to <lambda-url>/2015-03-31/functions/<function>/invocations (the Lambda Invoke
  API), waiting at most the function's Timeout. Outcomes:
    * connection refused (the function is not there): not an invocation; retried with backoff,
      consuming no retry, until the records exceed the maximum age (AWS: "Before invocation").
    * timeout, HTTP failure, non-2xx status, an X-Amz-Function-Error header or an `errorType` in
      the body: a function error. With bisect on, a batch of more than one record is split in two
      halves, retried one after the other (each inherits the retry count: splitting consumes no
      retry). A single record (or any batch with bisect off) is retried.
    * with ReportBatchItemFailures, {"batchItemFailures": [{"itemIdentifier": "<SequenceNumber>"}]}
      with at least one entry: records before the lowest failed SequenceNumber are checkpointed
      and the batch is retried from that record: with bisect on, only the remaining records of
      the batch; with it off, the shard is re-read from AT_SEQUENCE_NUMBER of that record. An
      identifier that is empty, missing or not a SequenceNumber of the batch fails the whole
      batch (AWS's rule). Without ReportBatchItemFailures such a response is a success.
    * null / {} / an empty or null batchItemFailures list: success, the batch is checkpointed.
- Retries use exponential backoff (--retry-base-delay doubling up to --retry-max-delay). Like
  MaximumRetryAttempts, --max-retries counts re-deliveries after the first attempt (so at most
  1 + max-retries invocations of the same records; -1 = retry forever). When they are used up,
  the batch is given up: one on-failure record per batch (below), and the shard moves past it.
- On-failure destination: one JSON message per given-up batch, shaped like AWS's invocation record
  for a DynamoDB stream (metadata only, never the records):
  {"requestContext": {"requestId", "functionArn", "condition", "approximateInvokeCount"},
   "responseContext": {"statusCode", "executedVersion", "functionError"}, "version": "1.0",
   "timestamp", "DDBStreamBatchInfo": {"shardId", "startSequenceNumber", "endSequenceNumber",
   "approximateArrivalOfFirstRecord", "approximateArrivalOfLastRecord", "batchSize", "streamArn"}}
  (responseContext is left out for records never invoked; functionError is there only when the
  last invocation ended in a function error). It is
  sent to SQS (--on-failure-queue-url, or the queue named by --on-failure-queue-name / the
  template, resolved with GetQueueUrl) and appended as one line to --failures-file, where a
  "runner" object adds local details (table, reason, error text, sequence numbers).
- --duplicate delivers every batch twice, the second time after the first returned (at-least-once
  redelivery). A record counts as processed only if neither delivery failed it: a function error
  in either delivery fails the batch, and item failures of both are merged.

Checkpoints live in memory only: a restarted runner starts again at the starting position (the
function must be idempotent anyway, as on AWS). One JSON line per invocation goes to stdout
(shard, records, first/last sequence number, attempt, duration_ms, failures, status); other events
(shard started/finished, bisect, expired, gave up, errors) are JSON lines too. SIGTERM / SIGINT stop
it cleanly. Only 127.0.0.1 is contacted: the AWS endpoint from env.sh and the --lambda-url given.
"""

import argparse
import base64
import collections
import datetime
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

try:  # boto3 is needed to run against LocalStack, not to import this module (tests use fakes)
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # pragma: no cover - only without botocore
    class BotoCoreError(Exception):
        pass

    class ClientError(Exception):
        def __init__(self, error_response, operation_name):
            super().__init__(f"{error_response['Error']['Code']} ({operation_name})")
            self.response = error_response

STOP = threading.Event()  # set by SIGTERM / SIGINT; every wait in here watches it
_LOG_LOCK = threading.Lock()
_FAILURES_LOCK = threading.Lock()

# Synchronous Invoke's request payload limit: "For synchronous invocations, the maximum payload
# size is 6 MB." (Lambda API reference, Invoke). 6 MB = 6 * 1024 * 1024 bytes.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

# Without --template: the runner's historical defaults. With it: AWS's defaults for properties the
# template leaves out (Lambda developer guide, "Lambda parameters for Amazon DynamoDB event source
# mappings"; function Timeout default 3 s, "Configure Lambda function timeout").
DEFAULTS = {
    "batch_size": 100, "max_retries": 5, "bisect": False, "max_record_age": -1,
    "report_batch_item_failures": True, "function_timeout": 300.0,
    "starting_position": "TRIM_HORIZON", "function": "orchestrator", "parallelization_factor": 1,
    "batching_window": 0,
}
AWS_DEFAULTS = dict(DEFAULTS, max_retries=-1, bisect=False, report_batch_item_failures=False,
                    function_timeout=3.0)


def log(event, **fields):
    """One JSON line on stdout (flushed: the runner usually writes to a log file)."""
    line = json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str)
    with _LOG_LOCK:
        print(line, flush=True)


def seq_key(seq):
    """DynamoDB Streams sequence numbers are decimal strings; compare them as integers."""
    return int(seq)


# --- the SAM template ------------------------------------------------------------------------------

class TemplateError(ValueError):
    pass


def _cfn_loader():
    """A yaml.SafeLoader that accepts CloudFormation's short tags (!Sub, !GetAtt, !Ref, !If...) and
    turns them into their long JSON form ({"Fn::Sub": ...}, {"Ref": ...})."""
    import yaml  # PyYAML: pinned in localstack/constraints.txt, installed by install.sh

    class CfnLoader(yaml.SafeLoader):
        pass

    def any_tag(loader, tag_suffix, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        name = tag_suffix
        if name == "Ref":
            return {"Ref": value}
        if name == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        if name == "Condition":
            return {"Condition": value}
        return {f"Fn::{name}": value}

    CfnLoader.add_multi_constructor("!", any_tag)
    return CfnLoader


def load_template(path):
    import yaml
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_cfn_loader())  # noqa: S506 - a SafeLoader subclass


class _Resolver:
    """Resolves the few intrinsic functions the mapping settings use: Ref to a parameter (its
    Default, Prefix from --prefix / $RULESTREAM_PREFIX), Fn::Sub with parameters and pseudo
    parameters, Fn::GetAtt <Queue>.Arn."""

    def __init__(self, doc, prefix, region, account):
        self.doc = doc
        self.params = {k: (v or {}).get("Default") for k, v in (doc.get("Parameters") or {}).items()}
        if prefix:
            self.params["Prefix"] = prefix
        self.params.update({"AWS::Region": region, "AWS::AccountId": account,
                            "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"})
        self.resources = doc.get("Resources") or {}

    def value(self, v):
        if isinstance(v, dict) and len(v) == 1:
            (k, arg), = v.items()
            if k == "Ref":
                if arg in self.params and self.params[arg] is not None:
                    return self.params[arg]
                raise TemplateError(f"cannot resolve Ref {arg!r} (not a parameter with a value)")
            if k == "Fn::Sub":
                return self.sub(arg)
            if k == "Fn::GetAtt":
                return self.getatt(arg)
            if k.startswith("Fn::"):
                raise TemplateError(f"unsupported intrinsic {k} in {v!r}")
        return v

    def sub(self, arg):
        if isinstance(arg, list):
            text, extra = arg[0], {k: self.value(x) for k, x in (arg[1] or {}).items()}
        else:
            text, extra = arg, {}
        out, i = [], 0
        while i < len(text):
            j = text.find("${", i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            k = text.find("}", j)
            if k < 0:
                raise TemplateError(f"unterminated ${{ in {text!r}")
            name = text[j + 2:k]
            if name.startswith("!"):  # ${!Literal}
                out.append("${" + name[1:] + "}")
            elif name in extra:
                out.append(str(extra[name]))
            elif self.params.get(name) is not None:
                out.append(str(self.params[name]))
            else:
                raise TemplateError(f"cannot resolve ${{{name}}} in {text!r}")
            i = k + 1
        return "".join(out)

    def getatt(self, arg):
        logical, attr = arg[0], arg[1]
        res = self.resources.get(logical)
        if not res:
            raise TemplateError(f"Fn::GetAtt: no resource {logical!r}")
        if res.get("Type") == "AWS::SQS::Queue" and attr == "Arn":
            name = self.value((res.get("Properties") or {}).get("QueueName"))
            if not name:
                raise TemplateError(f"queue {logical} has no QueueName")
            return f"arn:aws:sqs:{self.params['AWS::Region']}:{self.params['AWS::AccountId']}:{name}"
        raise TemplateError(f"Fn::GetAtt {logical}.{attr} is not supported")


def template_settings(path, logical_id=None, prefix=None, region="us-east-1",
                      account="000000000000"):
    """The event source mapping settings of the function's DynamoDB event in the SAM template at
    `path`, as a dict of runner settings (AWS's defaults for absent properties)."""
    doc = load_template(path)
    r = _Resolver(doc, prefix, region, account)
    resources = doc.get("Resources") or {}

    def ddb_events(res):
        events = ((res.get("Properties") or {}).get("Events")) or {}
        return {name: ev for name, ev in events.items() if (ev or {}).get("Type") == "DynamoDB"}

    if logical_id is None:
        candidates = [k for k, v in resources.items()
                      if v.get("Type") == "AWS::Serverless::Function" and ddb_events(v)]
        if len(candidates) != 1:
            raise TemplateError(f"{path}: {len(candidates)} functions with a DynamoDB event "
                                f"({', '.join(candidates) or 'none'}): pass --function-logical-id")
        logical_id = candidates[0]
    res = resources.get(logical_id)
    if not res or res.get("Type") != "AWS::Serverless::Function":
        raise TemplateError(f"{path}: no AWS::Serverless::Function {logical_id!r}")
    events = ddb_events(res)
    if len(events) != 1:
        raise TemplateError(f"{path}: {logical_id} has {len(events)} DynamoDB events, expected one")
    (event_name, event), = events.items()
    props = event.get("Properties") or {}
    fprops = res.get("Properties") or {}
    globals_fn = ((doc.get("Globals") or {}).get("Function")) or {}

    def prop(name, default):
        return r.value(props[name]) if name in props else default

    timeout = fprops.get("Timeout", globals_fn.get("Timeout"))
    s = {
        "logical_id": logical_id,
        "event_name": event_name,
        "batch_size": int(prop("BatchSize", AWS_DEFAULTS["batch_size"])),
        "bisect": bool(prop("BisectBatchOnFunctionError", False)),
        "max_retries": int(prop("MaximumRetryAttempts", -1)),
        "max_record_age": int(prop("MaximumRecordAgeInSeconds", -1)),
        "parallelization_factor": int(prop("ParallelizationFactor", 1)),
        "batching_window": int(prop("MaximumBatchingWindowInSeconds", 0)),
        "report_batch_item_failures":
            "ReportBatchItemFailures" in [r.value(x) for x in prop("FunctionResponseTypes", [])],
        "starting_position": prop("StartingPosition", AWS_DEFAULTS["starting_position"]),
        "function_timeout": float(r.value(timeout)) if timeout is not None
        else AWS_DEFAULTS["function_timeout"],
        "function_name": r.value(fprops["FunctionName"]) if "FunctionName" in fprops else None,
        "function": (((res.get("Metadata") or {}).get("BuildProperties")) or {}).get("Binary"),
        "filters": [],
        "on_failure_queue_name": None,
    }
    for f in (prop("FilterCriteria", {}) or {}).get("Filters") or []:
        pattern = r.value(f.get("Pattern"))
        s["filters"].append(json.loads(pattern) if isinstance(pattern, str) else pattern)
    dest = ((prop("DestinationConfig", {}) or {}).get("OnFailure") or {}).get("Destination")
    if dest is not None:
        arn = r.value(dest)
        parts = arn.split(":")
        if len(parts) < 6 or parts[2] != "sqs":
            raise TemplateError(f"on-failure destination {arn!r}: only SQS queues are supported")
        s["on_failure_queue_name"] = parts[5]
    return s


# --- event filtering (FilterCriteria) --------------------------------------------------------------

_MISSING = object()
_OPERATORS = {"prefix", "suffix", "exists", "anything-but", "numeric", "equals-ignore-case"}


def validate_filter(pattern, path="pattern"):
    """Raises ValueError for a pattern this runner cannot evaluate."""
    if not isinstance(pattern, dict):
        raise ValueError(f"{path}: a filter pattern is a JSON object")
    for key, cond in pattern.items():
        if isinstance(cond, dict):
            validate_filter(cond, f"{path}.{key}")
        elif isinstance(cond, list):
            for c in cond:
                if isinstance(c, dict) and (len(c) != 1 or next(iter(c)) not in _OPERATORS):
                    raise ValueError(f"{path}.{key}: unsupported filter rule {c!r}")
        else:
            raise ValueError(f"{path}.{key}: a filter value must be an object or an array")


def _numeric_ok(spec, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    ops = {"=": lambda a, b: a == b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
           ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
    return all(ops[spec[i]](v, spec[i + 1]) for i in range(0, len(spec), 2))


def _leaf_ok(rule, v):
    values = v if isinstance(v, list) else [v]
    if isinstance(rule, dict):
        (op, arg), = rule.items()
        if op == "exists":
            return (v is not _MISSING) == bool(arg)
        if v is _MISSING:
            return False
        if op == "prefix":
            return any(isinstance(x, str) and x.startswith(arg) for x in values)
        if op == "suffix":
            return any(isinstance(x, str) and x.endswith(arg) for x in values)
        if op == "equals-ignore-case":
            return any(isinstance(x, str) and x.lower() == arg.lower() for x in values)
        if op == "anything-but":
            banned = arg if isinstance(arg, list) else [arg]
            return all(x not in banned for x in values)
        if op == "numeric":
            return any(_numeric_ok(arg, x) for x in values)
        return False
    return v is not _MISSING and rule in values


def filter_matches(pattern, value):
    """Does a record (as the function would see it) match one filter pattern?"""
    for key, cond in pattern.items():
        v = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if isinstance(cond, dict):
            if not isinstance(v, dict) or not filter_matches(cond, v):
                return False
        elif not any(_leaf_ok(rule, v) for rule in cond):
            return False
    return True


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


_EVENT_HEAD, _EVENT_SEP, _EVENT_TAIL = b'{"Records": [', b", ", b"]}"


def event_body(parts):
    """The event's JSON bytes from the records' JSON bytes: exactly json.dumps({"Records": [...]})."""
    return _EVENT_HEAD + _EVENT_SEP.join(parts) + _EVENT_TAIL


def fitting_prefix(parts, limit):
    """How many leading records fit in an event of at most `limit` bytes (0 if not even one)."""
    size = len(_EVENT_HEAD) + len(_EVENT_TAIL)
    for i, p in enumerate(parts):
        size += len(p) + (len(_EVENT_SEP) if i else 0)
        if size > limit:
            return i
    return len(parts)


def iso_utc(epoch, millis=True):
    """Epoch seconds -> '2019-11-14T00:13:49.717Z' (the invocation record's timestamp format)."""
    dt = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def arrival(rec):
    """ApproximateCreationDateTime of a stream record as an ISO string (seconds, as AWS shows it;
    milliseconds when the record has them), or None."""
    ts = to_epoch(rec["dynamodb"].get("ApproximateCreationDateTime"))
    if ts is None:
        return None
    ts = float(ts)
    return iso_utc(ts, millis=ts != int(ts))


# --- invoking the function -------------------------------------------------------------------------

class Result:
    """What one invocation (or a --duplicate pair) came to. status: "ok", "partial", "error" (a
    function error) or "not_invoked" (the function could not be reached: not an invocation)."""

    def __init__(self, status, failed=(), detail="", status_code=None, function_error=None):
        self.status = status
        self.failed = list(failed)
        self.detail = detail
        self.status_code = status_code
        self.function_error = function_error

    def response_context(self):
        ctx = {"statusCode": self.status_code, "executedVersion": "$LATEST"}
        if self.function_error:
            ctx["functionError"] = self.function_error
        return ctx


class Invoker:
    """POSTs events to the Lambda Invoke API and classifies the answer."""

    def __init__(self, lambda_url, function, timeout, report_batch_item_failures=True):
        self.url = f"{lambda_url.rstrip('/')}/2015-03-31/functions/{function}/invocations"
        self.timeout = timeout
        self.report = report_batch_item_failures
        # No proxies, ever: the function runs on 127.0.0.1.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def invoke(self, body, batch_seqs):
        """POSTs the event `body` (bytes) and returns a Result."""
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        t0 = time.monotonic()
        # The function's Timeout bounds the wait: a slower answer is a function error, as on AWS
        # where Lambda stops the function. `cargo lambda watch` does NOT stop it: the invocation
        # keeps running there (and may still write its results) after we stopped waiting.
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                code, headers, payload = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:  # non-2xx: the function (or the emulator) failed
            return Result("error", batch_seqs, f"HTTP {e.code}: {e.read()[:300]!r}", e.code,
                          "Unhandled")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ConnectionRefusedError):
                return Result("not_invoked", batch_seqs, f"function not reachable: {reason}")
            if isinstance(reason, (socket.timeout, TimeoutError)):
                return self.timed_out(batch_seqs)
            return Result("error", batch_seqs, f"invoke failed: {e}", None, "Unhandled")
        if time.monotonic() - t0 > self.timeout:
            return self.timed_out(batch_seqs)  # answered, but only after the Timeout
        if headers.get("X-Amz-Function-Error"):
            return Result("error", batch_seqs, f"function error: {payload[:300]!r}", code,
                          headers.get("X-Amz-Function-Error"))
        text = payload.decode("utf-8", "replace").strip()
        if not text or text == "null":
            return Result("ok", status_code=code)  # an empty / null response is a complete success
        try:
            answer = json.loads(text)
        except ValueError:
            return Result("error", batch_seqs, f"response is not JSON: {text[:300]!r}", code,
                          "Unhandled")
        if isinstance(answer, dict) and "errorType" in answer:
            return Result("error", batch_seqs, f"function error: {text[:300]}", code, "Unhandled")
        items = answer.get("batchItemFailures") if isinstance(answer, dict) else None
        if not items or not self.report:
            # Without ReportBatchItemFailures, Lambda does not look at batchItemFailures.
            return Result("ok", status_code=code)
        failed = []
        known = set(batch_seqs)
        for item in items:
            ident = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(ident, str) or ident not in known:
                # AWS: an empty/null/unknown identifier or a bad key name fails the whole batch.
                return Result("error", batch_seqs, f"invalid batchItemFailures entry {item!r}",
                              code, None)
            failed.append(ident)
        return Result("partial", sorted(set(failed), key=seq_key), "", code, None)

    def timed_out(self, batch_seqs):
        # What AWS reports for a timed-out synchronous invocation: status 200 and a function error.
        return Result("error", batch_seqs, f"timed out after {self.timeout:g} s (function Timeout)",
                      200, "Unhandled")


# --- on-failure destination ------------------------------------------------------------------------

class SqsDestination:
    """Sends invocation records to an SQS queue (by URL, or by name through GetQueueUrl, resolved
    on first use and cached)."""

    def __init__(self, sqs, queue_url=None, queue_name=None):
        self.sqs = sqs
        self.queue_url = queue_url
        self.queue_name = queue_name
        self._lock = threading.Lock()

    def describe(self):
        return self.queue_url or f"queue name {self.queue_name}"

    def __call__(self, message):
        with self._lock:
            if not self.queue_url:
                self.queue_url = self.sqs.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
            url = self.queue_url
        self.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(message))


# --- one shard -------------------------------------------------------------------------------------

class Segment:
    """Records to deliver together, in order: a batch, or part of one after a split."""

    def __init__(self, records, retries=0, reread=False):
        self.records = list(records)  # raw GetRecords records (after filtering)
        self.retries = retries  # retries used (re-deliveries after a failed attempt)
        self.reread = reread  # next attempt re-reads the shard AT_SEQUENCE_NUMBER of the head
        self.waits = 0  # backoffs after "not invoked" (they use no retry)
        self.last_result = None  # the Result of the last invocation of these records

    def seqs(self):
        return [r["dynamodb"]["SequenceNumber"] for r in self.records]


class Delivery:
    """Delivers a plan of segments, its head first, with retries, bisection, the payload cap and
    the record age limit. Used by a shard's worker (one batch in flight per shard) and by each of
    its lanes (ParallelizationFactor > 1). The owner provides `r`, `s`, `stream_arn`, `shard_id`,
    `plan`, `invokes`, and the hooks `done_with`, `checkpoint` and `reread`."""

    lane = None  # the lane's index, in log lines (None: the shard's own worker)

    # -- one delivery attempt of the plan's head --
    def attempt(self):
        s, stop = self.s, self.r.stop
        seg = self.plan[0]
        if seg.reread and len(self.plan) == 1:
            self.reread(seg)
        seg.reread = False
        if not seg.records:
            self.done_with(seg)
            return

        # Record age: records older than the maximum age are not delivered.
        if s.max_record_age >= 0:
            now = self.r.clock()
            n = 0
            for rec in seg.records:
                ts = to_epoch(rec["dynamodb"].get("ApproximateCreationDateTime"))
                if ts is None or now - float(ts) <= s.max_record_age:
                    break
                n += 1
            if n:
                expired, seg.records = seg.records[:n], seg.records[n:]
                log("expired", shard=self.shard_id, records=n,
                    first_seq=expired[0]["dynamodb"]["SequenceNumber"],
                    last_seq=expired[-1]["dynamodb"]["SequenceNumber"],
                    max_record_age=s.max_record_age)
                self.give_up(expired, "RecordAgeExceeded", seg.last_result, "record_age",
                             f"older than {s.max_record_age} s")
                self.checkpoint(expired[-1]["dynamodb"]["SequenceNumber"])
                if not seg.records:
                    self.done_with(seg)
                return

        # Payload cap: the records that fit go now, the rest as the next segment.
        records = [event_record(rec, self.stream_arn, self.r.region) for rec in seg.records]
        parts = [json.dumps(rec).encode() for rec in records]
        fit = fitting_prefix(parts, s.max_payload)
        if fit < len(parts) and len(parts) > 1:
            cut = max(fit, 1)  # an oversized head record goes alone (and fails alone, below)
            rest = Segment(seg.records[cut:], retries=seg.retries)
            seg.records, records, parts = seg.records[:cut], records[:cut], parts[:cut]
            self.plan.insert(1, rest)
            log("payload_split", shard=self.shard_id, records=cut, rest=len(rest.records),
                limit=s.max_payload)
        seqs = seg.seqs()

        t0 = time.monotonic()
        deliveries = 0
        if fit == 0:  # one record larger than the cap: never sent; Invoke would refuse it (413)
            size = len(event_body(parts))
            result = Result("error", seqs, f"RequestTooLargeException: event of {size} bytes "
                            f"exceeds {s.max_payload}", 413, None)
        else:
            body = event_body(parts)
            result = self.r.invoker.invoke(body, seqs)
            deliveries = 1
            if s.duplicate and not stop.is_set() and result.status != "not_invoked":
                # At-least-once: the same batch again, after the first delivery returned.
                second = self.r.invoker.invoke(body, seqs)
                deliveries = 2
                result = merge_results(result, second, seqs)
        duration_ms = round((time.monotonic() - t0) * 1000, 1)
        if result.status == "not_invoked":
            deliveries = 0
        else:
            for sq in seqs:
                self.invokes[sq] = self.invokes.get(sq, 0) + deliveries
            seg.last_result = result

        base = dict(shard=self.shard_id, records=len(seqs), first_seq=seqs[0], last_seq=seqs[-1],
                    attempt=seg.retries + 1, deliveries=deliveries, duration_ms=duration_ms,
                    failures=len(result.failed))
        if self.lane is not None:
            base["lane"] = self.lane
        if result.status == "ok":
            log("batch", status="ok", **base)
            self.done_with(seg)
            return
        if result.status == "not_invoked":
            # AWS: an error before the function runs is retried until the records expire or
            # exceed the maximum age; it uses none of the retries.
            seg.waits += 1
            seg.reread = not s.bisect
            log("batch", status="not_invoked", error=result.detail, **base)
            stop.wait(self.backoff(seg.waits))
            return

        if result.status == "error":
            log("batch", status="error", error=result.detail or None, **base)
            if s.bisect and len(seg.records) > 1:
                # Split in two and deliver the halves one after the other; no retry is used.
                half = (len(seg.records) + 1) // 2
                first = Segment(seg.records[:half], retries=seg.retries)
                second = Segment(seg.records[half:], retries=seg.retries)
                first.last_result = second.last_result = result
                # In place: the plan is never empty meanwhile (a lane reads as idle when it is).
                self.plan[0] = first
                self.plan.insert(1, second)
                log("bisect", shard=self.shard_id, records=len(seqs), halves=[half, len(seqs) - half])
                return
            seg.reread = not s.bisect  # without bisect: re-read the batch from its first record
            self.retry_or_give_up(seg, result, "function_error")
            return

        # Item failures: everything before the lowest failed record is done; retry from there.
        lowest = result.failed[0]
        idx = seqs.index(lowest)
        log("batch", status="partial", resume_at=lowest, **base)
        if idx:
            self.checkpoint(seqs[idx - 1])
            seg.records = seg.records[idx:]
            seg.retries = 0  # progress: the new head has been delivered once, in this batch
        seg.reread = not s.bisect  # with bisect on: only the remaining records of the batch
        self.retry_or_give_up(seg, result, "batch_item_failure")

    def retry_or_give_up(self, seg, result, reason):
        s = self.s
        if s.max_retries >= 0 and seg.retries >= s.max_retries:
            self.give_up(seg.records, "RetryAttemptsExhausted", result, reason, result.detail)
            self.done_with(seg)
            return
        seg.retries += 1
        self.r.stop.wait(self.backoff(seg.retries))

    def backoff(self, n):
        return min(self.s.retry_base_delay * (2 ** (n - 1)), self.s.retry_max_delay)

    def checkpoint(self, last_seq):
        """Records up to `last_seq` are done: their invocation counts are no longer needed."""
        k = seq_key(last_seq)
        for sq in [sq for sq in self.invokes if seq_key(sq) <= k]:
            del self.invokes[sq]

    def give_up(self, records, condition, result, reason, detail):
        seqs = [r["dynamodb"]["SequenceNumber"] for r in records]
        self.r.on_failure(self.stream_arn, self.shard_id, records, condition, result,
                          self.invokes.get(seqs[0], 0), reason, detail)
        log("gave_up", shard=self.shard_id, condition=condition, records=len(seqs),
            first_seq=seqs[0], last_seq=seqs[-1], invocations=self.invokes.get(seqs[0], 0))


class ShardWorker(Delivery, threading.Thread):
    """Reads one shard in order. With a ParallelizationFactor of 1 it delivers the shard's
    batches itself, one at a time; above 1 it hands each record to one of that many lanes by its
    partition key (each key stays in order, on one lane) and reads on."""

    def __init__(self, runner, stream_arn, shard_id):
        super().__init__(name=f"shard-{shard_id[-12:]}", daemon=True)
        self.r = runner
        self.s = runner.settings
        self.stream_arn = stream_arn
        self.shard_id = shard_id
        # Where to (re)open the shard: (ShardIteratorType, SequenceNumber or None). It is moved
        # forward on every checkpoint, so any error can reopen the shard at the right place.
        self.position = (self.s.starting_position, None)
        self.iterator = None
        # The batch being delivered: segments still to do, in order, and the read they came from
        # (last sequence number read, NextShardIterator after it).
        self.plan = collections.deque()
        self.window = None
        self.invokes = {}  # SequenceNumber -> invocations that carried it (approximateInvokeCount)
        self.read_to_end = False  # read to its end (closed shard) or gone
        pf = self.s.parallelization_factor
        self.lanes = [Lane(self, i) for i in range(pf)] if pf > 1 else None

    # -- shard iterators --
    def open_iterator(self, kind=None, seq=None):
        if kind is None:
            kind, seq = self.position
        args = dict(StreamArn=self.stream_arn, ShardId=self.shard_id, ShardIteratorType=kind)
        if seq is not None:
            args["SequenceNumber"] = seq
        return self.r.streams.get_shard_iterator(**args)["ShardIterator"]

    @property
    def finished(self):
        """Read to its end and every record delivered or given up: a child shard may start."""
        return self.read_to_end and (self.lanes is None or all(ln.idle() for ln in self.lanes))

    def run(self):
        log("shard_started", shard=self.shard_id, position=self.position[0],
            lanes=len(self.lanes) if self.lanes else 1)
        for ln in self.lanes or ():
            ln.start()
        try:
            self.loop()
            while self.lanes and not self.finished and not self.r.stop.is_set():
                self.r.stop.wait(0.01)  # a closed shard: its lanes finish what they hold
        finally:
            log("shard_stopped", shard=self.shard_id, finished=self.finished)

    def loop(self):
        stop = self.r.stop
        while not stop.is_set() and not self.read_to_end:
            try:
                if self.plan:
                    self.attempt()
                    continue
                if self.lanes and sum(ln.held() for ln in self.lanes) >= (
                        len(self.lanes) * self.s.batch_size):
                    stop.wait(self.s.poll_interval)  # the lanes hold enough: read on later
                    continue
                if self.iterator is None:
                    self.iterator = self.open_iterator()
                out = self.r.streams.get_records(ShardIterator=self.iterator,
                                                 Limit=self.s.batch_size)
            except ClientError as e:
                code = e.response["Error"]["Code"]
                if code == "ExpiredIteratorException":
                    self.iterator = None  # reopen at self.position
                    continue
                if code == "TrimmedDataAccessException":
                    # Our position fell off the 24 h retention window: AWS skips to the oldest data.
                    log("shard_trimmed", shard=self.shard_id, position=self.position)
                    self.position, self.iterator = ("TRIM_HORIZON", None), None
                    self.plan.clear()
                    continue
                if code == "ResourceNotFoundException":
                    log("shard_gone", shard=self.shard_id, error=str(e))
                    self.read_to_end = True
                    return
                log("shard_error", shard=self.shard_id, error=str(e))
                self.iterator = None
                stop.wait(1.0)
                continue
            except BotoCoreError as e:  # connection refused, timeouts...
                log("shard_error", shard=self.shard_id, error=str(e))
                self.iterator = None
                stop.wait(1.0)
                continue
            except Exception as e:  # a bug here must not lose records: the plan is kept, retried
                log("deliver_error", shard=self.shard_id, error=repr(e))
                self.iterator = None
                stop.wait(1.0)
                continue

            records, next_it = out.get("Records", []), out.get("NextShardIterator")
            if not records:
                if next_it is None:  # a closed shard read to its end
                    self.read_to_end = True
                    return
                self.iterator = next_it
                stop.wait(self.s.poll_interval)
                continue
            self.start_batch(records, next_it)

    def start_batch(self, records, next_it):
        self.window = (records[-1]["dynamodb"]["SequenceNumber"], next_it)
        kept = self.r.filtered(records, self.stream_arn)
        if len(kept) < len(records):
            log("filtered", shard=self.shard_id, records=len(records), dropped=len(records) - len(kept))
        if self.lanes:
            for rec in kept:
                self.lanes[self.r.lane_of(rec, len(self.lanes))].put(rec)
            self.end_batch()  # handed over: the lanes deliver, the reader reads on
        elif kept:
            self.plan.append(Segment(kept))
        else:
            self.end_batch()

    def end_batch(self):
        """The whole read is delivered or given up: checkpoint after it, read on."""
        last_seq, next_it = self.window
        self.checkpoint(last_seq)
        self.window = None
        if next_it is None:  # the shard closed and this was its last batch
            self.read_to_end = True
        self.iterator = next_it

    def checkpoint(self, last_seq):
        self.position = ("AFTER_SEQUENCE_NUMBER", last_seq)
        super().checkpoint(last_seq)

    def done_with(self, seg):
        """`seg` (the plan's head) is delivered or given up."""
        if seg.records:
            self.checkpoint(seg.records[-1]["dynamodb"]["SequenceNumber"])
        self.plan.popleft()
        if not self.plan:
            self.end_batch()

    def reread(self, seg):
        """Re-reads the shard from AT_SEQUENCE_NUMBER of the segment's head (as a retry without
        bisection does): the retried batch starts with it and may take in newer records."""
        head = seg.records[0]["dynamodb"]["SequenceNumber"]
        it = self.open_iterator("AT_SEQUENCE_NUMBER", head)
        out = self.r.streams.get_records(ShardIterator=it, Limit=self.s.batch_size)
        records = out.get("Records", [])
        if records:
            kept = self.r.filtered(records, self.stream_arn)
            last = records[-1]["dynamodb"]["SequenceNumber"]
            if seq_key(last) >= seq_key(self.window[0]):
                self.window = (last, out.get("NextShardIterator"))
            seg.records = kept

class Lane(Delivery, threading.Thread):
    """One of a shard's ParallelizationFactor lanes (AWS delivers up to that many batches of one
    shard at a time): the records whose partition key hashes to it, in stream order, delivered
    one batch at a time. A retry without bisection takes the lane's newer records into the batch
    (as a re-read of the shard would), never another lane's."""

    def __init__(self, shard, index):
        super().__init__(name=f"lane-{shard.shard_id[-8:]}-{index}", daemon=True)
        self.r, self.s = shard.r, shard.s
        self.stream_arn, self.shard_id = shard.stream_arn, shard.shard_id
        self.lane = index
        self.plan = collections.deque()
        self.invokes = {}
        self.queue = collections.deque()  # records handed over, not yet in a batch
        self.cond = threading.Condition()

    def put(self, rec):
        with self.cond:
            self.queue.append(rec)
            self.cond.notify()

    def held(self):
        # list() copies the plan in one step: the lane's thread may be splitting a segment.
        with self.cond:
            return len(self.queue) + sum(len(seg.records) for seg in list(self.plan))

    def idle(self):
        with self.cond:
            return not self.queue and not self.plan

    def take(self, n):
        return [self.queue.popleft() for _ in range(min(n, len(self.queue)))]

    def run(self):
        stop = self.r.stop
        while not stop.is_set():
            with self.cond:
                if not self.queue and not self.plan:
                    self.cond.wait(0.1)
                    continue
                if not self.plan:
                    self.plan.append(Segment(self.take(self.s.batch_size)))
            try:
                self.attempt()
            except Exception as e:  # a bug here must not lose records: the plan is kept, retried
                log("deliver_error", shard=self.shard_id, lane=self.lane, error=repr(e))
                stop.wait(1.0)

    def done_with(self, seg):
        if seg.records:
            self.checkpoint(seg.records[-1]["dynamodb"]["SequenceNumber"])
        with self.cond:
            self.plan.popleft()

    def reread(self, seg):
        with self.cond:
            seg.records += self.take(self.s.batch_size - len(seg.records))


def merge_results(a, b, seqs):
    """Two deliveries of the same batch (--duplicate): a record is processed only if neither failed
    it. A delivery that did not reach the function counts as a function error here."""
    if "error" in (a.status, b.status) or "not_invoked" in (a.status, b.status):
        bad = a if a.status in ("error", "not_invoked") else b
        return Result("error", seqs, bad.detail, bad.status_code, bad.function_error or "Unhandled")
    if "partial" in (a.status, b.status):
        failed = sorted(set(a.failed) | set(b.failed), key=seq_key)
        return Result("partial", failed, "", a.status_code, None)
    return a


# --- the mapping -----------------------------------------------------------------------------------

class Runner:
    """The mapping: finds the stream and its shards, runs a worker per shard. Clients (DynamoDB,
    DynamoDB Streams, SQS), the invoker and the destination can be injected (tests use fakes)."""

    def __init__(self, settings, ddb=None, streams=None, invoker=None, destination=None,
                 region=None, stop=None, clock=time.time):
        self.settings = settings
        self.stop = stop or STOP
        self.clock = clock
        session = None
        if ddb is None or streams is None or (destination is None and settings.wants_sqs):
            import boto3
            from botocore.config import Config
            session = boto3.session.Session()
            cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                         read_timeout=30)
            ddb = ddb or session.client("dynamodb", config=cfg)
            streams = streams or session.client("dynamodbstreams", config=cfg)
            if destination is None and settings.wants_sqs:
                destination = SqsDestination(session.client("sqs", config=cfg),
                                             settings.on_failure_queue_url,
                                             settings.on_failure_queue_name)
        self.region = region or (session.region_name if session else None) or "us-east-1"
        self.ddb = ddb
        self.streams = streams
        self.destination = destination
        self.invoker = invoker or Invoker(settings.lambda_url, settings.function,
                                          settings.function_timeout,
                                          settings.report_batch_item_failures)
        self.workers = {}  # (stream ARN, shard id) -> ShardWorker
        self.stream_arn = None
        self.hash_key = None  # the table's partition key: records of one key share a lane

    def filtered(self, records, stream_arn):
        filters = self.settings.filters
        if not filters:
            return list(records)
        return [rec for rec in records
                if any(filter_matches(p, event_record(rec, stream_arn, self.region)) for p in filters)]

    def function_arn(self, stream_arn):
        parts = stream_arn.split(":")
        account = parts[4] if len(parts) > 4 and parts[4] else "000000000000"
        name = self.settings.function_name or self.settings.function
        return f"arn:aws:lambda:{self.region}:{account}:function:{name}"

    def invocation_record(self, stream_arn, shard_id, records, condition, result, invokes):
        """The on-failure record AWS sends for a DynamoDB stream batch (metadata only)."""
        msg = {"requestContext": {"requestId": str(uuid.uuid4()),
                                  "functionArn": self.function_arn(stream_arn),
                                  "condition": condition,
                                  "approximateInvokeCount": invokes}}
        if result is not None:
            msg["responseContext"] = result.response_context()
        msg["version"] = "1.0"
        msg["timestamp"] = iso_utc(self.clock())
        msg["DDBStreamBatchInfo"] = {
            "shardId": shard_id,
            "startSequenceNumber": records[0]["dynamodb"]["SequenceNumber"],
            "endSequenceNumber": records[-1]["dynamodb"]["SequenceNumber"],
            "approximateArrivalOfFirstRecord": arrival(records[0]),
            "approximateArrivalOfLastRecord": arrival(records[-1]),
            "batchSize": len(records),
            "streamArn": stream_arn,
        }
        return msg

    def on_failure(self, stream_arn, shard_id, records, condition, result, invokes, reason, detail):
        msg = self.invocation_record(stream_arn, shard_id, records, condition, result, invokes)
        if self.destination is not None:
            try:
                self.destination(msg)
                log("destination_sent", shard=shard_id, condition=condition,
                    request_id=msg["requestContext"]["requestId"])
            except Exception as e:  # noqa: BLE001 - the failures file still gets the line
                log("destination_error", shard=shard_id, error=repr(e))
        if self.settings.failures_file:
            line = dict(msg, runner={
                "table": self.settings.table, "function": self.settings.function,
                "reason": reason, "detail": (detail or None) and str(detail)[:300],
                "sequenceNumbers": [r["dynamodb"]["SequenceNumber"] for r in records]})
            with _FAILURES_LOCK, open(self.settings.failures_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def lane_of(self, rec, lanes):
        """The lane of a record: a hash of its partition key (all its keys if that is unknown)."""
        keys = rec["dynamodb"].get("Keys") or {}
        key = keys.get(self.hash_key) if self.hash_key else None
        blob = json.dumps(key if key is not None else keys, sort_keys=True, default=str)
        return zlib.crc32(blob.encode()) % lanes

    def current_stream(self):
        """LatestStreamArn of the table, or None while the table (or its stream) does not exist."""
        try:
            table = self.ddb.describe_table(TableName=self.settings.table)["Table"]
            self.hash_key = next((k["AttributeName"] for k in table.get("KeySchema") or []
                                  if k.get("KeyType") == "HASH"), None)
            return table.get("LatestStreamArn")
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
            log("stream", table=self.settings.table, stream_arn=arn)
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
        s = self.settings
        log("runner_started", table=s.table, function=s.function, url=self.invoker.url,
            template=s.template, logical_id=s.logical_id, batch_size=s.batch_size,
            max_retries=s.max_retries, bisect=s.bisect, max_record_age=s.max_record_age,
            function_timeout=s.function_timeout,
            report_batch_item_failures=s.report_batch_item_failures,
            parallelization_factor=s.parallelization_factor, filters=s.filters,
            on_failure=self.destination.describe() if hasattr(self.destination, "describe") else None,
            duplicate=s.duplicate, failures_file=s.failures_file)
        if s.batching_window:
            log("not_applied", setting="MaximumBatchingWindowInSeconds", value=s.batching_window)
        waiting_logged = False
        while not self.stop.is_set():
            try:
                self.refresh()
                if not self.stream_arn and not waiting_logged:
                    log("waiting", table=s.table, reason="no such table or no stream")
                    waiting_logged = True
            except (ClientError, BotoCoreError) as e:
                log("describe_error", error=str(e))
            self.stop.wait(s.describe_interval)
        # Let in-flight batches finish for a moment; workers are daemon threads, so a batch still
        # waiting on the function does not keep the process alive (it will be redelivered).
        deadline = time.monotonic() + s.shutdown_grace
        for w in list(self.workers.values()):
            w.join(max(0.0, deadline - time.monotonic()))
        log("runner_stopped", table=s.table)


# --- command line ----------------------------------------------------------------------------------

def parse_args(argv=None):
    """Parses the command line and fills in the settings: flag > template > default."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    port = os.environ.get("RULESTREAM_LAMBDA_PORT", "9000")
    p.add_argument("--table", required=True, help="table whose stream is read")
    p.add_argument("--template", help="SAM template to read the mapping's settings from")
    p.add_argument("--function-logical-id",
                   help="function resource in --template (default: the one with a DynamoDB event)")
    p.add_argument("--prefix", default=os.environ.get("RULESTREAM_PREFIX"),
                   help="value of the template's Prefix parameter (default $RULESTREAM_PREFIX)")
    p.add_argument("--function", default=None,
                   help="function name in the Invoke URL (the binary; default: the template's "
                        "BuildProperties.Binary, else orchestrator)")
    p.add_argument("--lambda-url", default=f"http://127.0.0.1:{port}",
                   help="Lambda Invoke API base URL (default http://127.0.0.1:$RULESTREAM_LAMBDA_PORT)")
    p.add_argument("--batch-size", type=int, default=None, help="GetRecords Limit (1-1000)")
    p.add_argument("--parallelization-factor", type=int, default=None,
                   help="batches of one shard delivered at a time (1-10); each partition key "
                        "stays in order")
    p.add_argument("--max-retries", type=int, default=None,
                   help="re-deliveries of a failing batch after the first attempt; -1 = forever")
    p.add_argument("--max-record-age", type=float, default=None,
                   help="seconds; older records are not delivered (RecordAgeExceeded); -1 = no limit")
    p.add_argument("--bisect", action=argparse.BooleanOptionalAction, default=None,
                   help="split a batch in two on a function error (BisectBatchOnFunctionError)")
    p.add_argument("--report-batch-item-failures", action=argparse.BooleanOptionalAction,
                   default=None, help="honour batchItemFailures in responses")
    p.add_argument("--function-timeout", "--invoke-timeout", dest="function_timeout", type=float,
                   default=None, help="the function's Timeout: a slower invocation is a function "
                                      "error (s; --invoke-timeout is the old name)")
    p.add_argument("--on-failure-queue-url", help="SQS queue URL of the on-failure destination")
    p.add_argument("--on-failure-queue-name",
                   help="SQS queue name of the on-failure destination (GetQueueUrl)")
    p.add_argument("--no-filter", action="store_true", help="ignore the template's FilterCriteria")
    p.add_argument("--duplicate", action="store_true",
                   help="deliver every batch twice (at-least-once redelivery)")
    p.add_argument("--failures-file",
                   help="JSON lines of given-up batches (the on-failure records + local details)")
    p.add_argument("--starting-position", default=None, choices=["TRIM_HORIZON", "LATEST"])
    p.add_argument("--poll-interval", type=float, default=0.2, help="sleep after an empty read (s)")
    p.add_argument("--describe-interval", type=float, default=3.0, help="DescribeStream period (s)")
    p.add_argument("--retry-base-delay", type=float, default=0.2, help="first retry backoff (s)")
    p.add_argument("--retry-max-delay", type=float, default=5.0, help="backoff cap (s)")
    p.add_argument("--shutdown-grace", type=float, default=5.0,
                   help="on SIGTERM, wait this long for in-flight batches (s)")
    args = p.parse_args(argv)

    tpl = {}
    if args.template:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        try:
            tpl = template_settings(args.template, args.function_logical_id, args.prefix, region)
        except (OSError, ValueError) as e:
            p.error(f"--template: {e}")
    elif args.function_logical_id:
        p.error("--function-logical-id needs --template")
    base = AWS_DEFAULTS if args.template else DEFAULTS
    for key in ("batch_size", "max_retries", "bisect", "max_record_age", "function_timeout",
                "report_batch_item_failures", "starting_position", "function",
                "parallelization_factor", "batching_window"):
        flag = getattr(args, key, None)
        if flag is not None:
            value = flag
        elif tpl.get(key) is not None:
            value = tpl[key]
        else:
            value = base[key]
        setattr(args, key, value)
    args.logical_id = tpl.get("logical_id")
    args.function_name = tpl.get("function_name")
    args.filters = [] if args.no_filter else tpl.get("filters", [])
    if not args.on_failure_queue_url and not args.on_failure_queue_name:
        args.on_failure_queue_name = tpl.get("on_failure_queue_name")
    args.wants_sqs = bool(args.on_failure_queue_url or args.on_failure_queue_name)
    args.max_payload = MAX_PAYLOAD_BYTES

    if not 1 <= args.batch_size <= 1000:
        p.error("batch size must be 1..1000 (the DynamoDB Streams GetRecords limit)")
    if not 1 <= args.parallelization_factor <= 10:
        p.error("--parallelization-factor must be 1..10 (ParallelizationFactor)")
    if args.max_retries < -1:
        p.error("--max-retries must be -1 (forever) or >= 0")
    if args.max_record_age < 0 and args.max_record_age != -1:
        p.error("--max-record-age must be -1 (no limit) or >= 0")
    if args.starting_position not in ("TRIM_HORIZON", "LATEST"):
        p.error(f"StartingPosition {args.starting_position!r} is not supported (TRIM_HORIZON, LATEST)")
    if args.function_timeout <= 0:
        p.error("--function-timeout must be > 0")
    for pattern in args.filters:
        try:
            validate_filter(pattern)
        except ValueError as e:
            p.error(f"FilterCriteria: {e} (or pass --no-filter)")
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
