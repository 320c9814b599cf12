"""Delivery logic of localstack/runner.py against fakes: an in-memory DynamoDB Streams shard, a fake
Lambda Invoke API on an ephemeral 127.0.0.1 port, and a list standing in for the SQS destination.

    python3 -m unittest localstack.tests.test_runner -v      (from the repository root)

Nothing here talks to LocalStack, Redis or `cargo lambda watch`.
"""

import datetime
import http.server
import json
import os
import socket
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import runner  # noqa: E402  (localstack/runner.py)

STREAM_ARN = "arn:aws:dynamodb:us-east-1:000000000000:table/t/stream/2026-01-01T00:00:00.000"
SHARD = "shardId-00000001700000000000-abcdef12"
WORKER_DEADLINE_S = 20
LOGS = []  # runner's JSON log lines, captured instead of printed
_real_log = runner.log


def setUpModule():
    runner.log = lambda event, **fields: LOGS.append(dict(fields, event=event))


def tearDownModule():
    runner.log = _real_log


def seq_of(i):
    return str(4000000000000000000001 + i * 100)


def make_record(i, age_s=0.0, pad=0, event_name="INSERT", key=None):
    """A GetRecords record as boto3 returns it (datetime ApproximateCreationDateTime); its
    execution_id is `key`, by default exec-<i>."""
    created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age_s)
    key = key or f"exec-{i}"
    image = {"execution_id": {"S": key}, "seq": {"N": "0"}}
    if pad:
        image["pad"] = {"S": "x" * pad}
    return {
        "eventID": f"event-{i}", "eventName": event_name, "eventVersion": "1.1",
        "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": created.replace(microsecond=0),
            "Keys": {"execution_id": {"S": key}, "seq": {"N": "0"}},
            "NewImage": image,
            "SequenceNumber": seq_of(i), "SizeBytes": 60 + pad, "StreamViewType": "NEW_IMAGE",
        },
    }


class FakeStreams:
    """One closed shard held in memory, with GetShardIterator / GetRecords semantics: TRIM_HORIZON,
    LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER; NextShardIterator is None once a read
    reaches the end of the (closed) shard."""

    def __init__(self, records):
        self.records = list(records)
        self.iterators = {}
        self.calls = []  # ("get_shard_iterator", type, seq) / ("get_records", index, limit, n)
        self.lock = threading.Lock()

    def _index(self, kind, seq):
        keys = [int(r["dynamodb"]["SequenceNumber"]) for r in self.records]
        if kind == "TRIM_HORIZON":
            return 0
        if kind == "LATEST":
            return len(keys)
        if kind == "AT_SEQUENCE_NUMBER":
            return next((i for i, k in enumerate(keys) if k >= int(seq)), len(keys))
        if kind == "AFTER_SEQUENCE_NUMBER":
            return next((i for i, k in enumerate(keys) if k > int(seq)), len(keys))
        raise ValueError(kind)

    def _token(self, index):
        token = f"iterator-{len(self.iterators)}"
        self.iterators[token] = index
        return token

    def get_shard_iterator(self, StreamArn, ShardId, ShardIteratorType, SequenceNumber=None):
        assert StreamArn == STREAM_ARN and ShardId == SHARD
        with self.lock:
            self.calls.append(("get_shard_iterator", ShardIteratorType, SequenceNumber))
            return {"ShardIterator": self._token(self._index(ShardIteratorType, SequenceNumber))}

    def get_records(self, ShardIterator, Limit):
        with self.lock:
            index = self.iterators[ShardIterator]
            out = self.records[index:index + Limit]
            end = index + len(out)
            self.calls.append(("get_records", index, Limit, len(out)))
            next_it = None if end >= len(self.records) else self._token(end)
            return {"Records": out, "NextShardIterator": next_it}


class FakeLambda:
    """The Lambda Invoke API on 127.0.0.1:<ephemeral>. `script(call_no, seqs, event)` returns
    (status, headers, body, delay_s)."""

    def __init__(self, script):
        self.script = script
        self.calls = []  # (seqs, body size)
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = json.loads(body)
                seqs = [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]
                with outer.lock:
                    outer.calls.append((seqs, len(body)))
                    n = len(outer.calls)
                status, headers, payload, delay = outer.script(n, seqs, event)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the runner stopped waiting (timeout)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def delivered_ok(self):
        """Sequence numbers of the invocations the script answered with success, in order."""
        return [s for seqs, _ in self.calls for s in seqs]


OK = (200, {}, b"null", 0)


def function_error(message="boom"):
    body = json.dumps({"errorType": "Boom", "errorMessage": message}).encode()
    return (200, {"X-Amz-Function-Error": "Unhandled"}, body, 0)


def item_failures(*seqs):
    body = json.dumps({"batchItemFailures": [{"itemIdentifier": s} for s in seqs]}).encode()
    return (200, {}, body, 0)


class RunnerTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.failures_file = os.path.join(self.tmp.name, "failures.jsonl")
        self.fake_lambda = None
        self.sent = []  # the on-failure destination (an injected callable)

    def tearDown(self):
        if self.fake_lambda:
            self.fake_lambda.close()
        self.tmp.cleanup()

    def serve(self, script):
        self.fake_lambda = FakeLambda(script)
        return self.fake_lambda.url

    def run_shard(self, records, url, *flags):
        """Delivers a closed shard to its end with the settings of `flags`; returns the fake."""
        settings = runner.parse_args(
            ["--table", "t", "--lambda-url", url, "--failures-file", self.failures_file,
             "--retry-base-delay", "0.001", "--retry-max-delay", "0.01", "--poll-interval", "0.01",
             *flags])
        streams = FakeStreams(records)
        stop = threading.Event()
        r = runner.Runner(settings, ddb=object(), streams=streams, destination=self.sent.append,
                          region="us-east-1", stop=stop)
        worker = runner.ShardWorker(r, STREAM_ARN, SHARD)
        t = threading.Thread(target=worker.run, daemon=True)
        t.start()
        t.join(WORKER_DEADLINE_S)
        stop.set()
        self.assertFalse(t.is_alive(), "the shard worker did not finish")
        self.assertTrue(worker.finished)
        self.worker = worker
        return streams

    def failure_lines(self):
        if not os.path.exists(self.failures_file):
            return []
        with open(self.failures_file, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def assert_invocation_record(self, msg, condition, first, last, count):
        """The shape of AWS's on-failure invocation record for a DynamoDB stream."""
        self.assertEqual(list(msg)[:1], ["requestContext"])
        self.assertEqual(set(msg) - {"responseContext"},
                         {"requestContext", "version", "timestamp", "DDBStreamBatchInfo"})
        rc = msg["requestContext"]
        self.assertEqual(set(rc), {"requestId", "functionArn", "condition", "approximateInvokeCount"})
        self.assertEqual(rc["condition"], condition)
        self.assertEqual(rc["functionArn"],
                         "arn:aws:lambda:us-east-1:000000000000:function:orchestrator")
        self.assertEqual(msg["version"], "1.0")
        self.assertRegex(msg["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        info = msg["DDBStreamBatchInfo"]
        self.assertEqual(list(info), ["shardId", "startSequenceNumber", "endSequenceNumber",
                                      "approximateArrivalOfFirstRecord",
                                      "approximateArrivalOfLastRecord", "batchSize", "streamArn"])
        self.assertEqual(info["shardId"], SHARD)
        self.assertEqual(info["streamArn"], STREAM_ARN)
        self.assertEqual(info["startSequenceNumber"], first)
        self.assertEqual(info["endSequenceNumber"], last)
        self.assertEqual(info["batchSize"], count)
        self.assertRegex(info["approximateArrivalOfFirstRecord"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertNotIn("Records", json.dumps(msg))  # metadata only


class BisectTest(RunnerTestCase):
    def test_bisection_isolates_the_poison_record_and_delivers_the_others(self):
        records = [make_record(i) for i in range(10)]
        poison = seq_of(6)

        def script(n, seqs, event):
            return function_error("poison") if poison in seqs else OK

        url = self.serve(script)
        self.run_shard(records, url, "--bisect", "--max-retries", "2")

        calls = self.fake_lambda.calls
        ok = [s for seqs, _ in calls if poison not in seqs for s in seqs]
        self.assertEqual(ok, [seq_of(i) for i in range(10) if i != 6])  # each once, in order
        alone = [seqs for seqs, _ in calls if seqs == [poison]]
        self.assertEqual(len(alone), 3)  # the first single-record attempt + MaximumRetryAttempts 2
        with_poison = sum(1 for seqs, _ in calls if poison in seqs)

        self.assertEqual(len(self.sent), 1)
        msg = self.sent[0]
        self.assert_invocation_record(msg, "RetryAttemptsExhausted", poison, poison, 1)
        self.assertEqual(msg["requestContext"]["approximateInvokeCount"], with_poison)
        self.assertEqual(msg["responseContext"],
                         {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"})
        lines = self.failure_lines()
        self.assertEqual(len(lines), 1)
        line = dict(lines[0])
        local = line.pop("runner")
        self.assertEqual(line["DDBStreamBatchInfo"], msg["DDBStreamBatchInfo"])
        self.assertEqual(local["sequenceNumbers"], [poison])
        self.assertEqual(local["reason"], "function_error")
        self.assertNotIn("NewImage", json.dumps(lines[0]))  # no record contents in the file

    def test_splitting_uses_no_retry(self):
        # MaximumRetryAttempts 0: bisection still narrows down to the single bad record.
        records = [make_record(i) for i in range(4)]
        poison = seq_of(3)
        url = self.serve(lambda n, seqs, e: function_error() if poison in seqs else OK)
        self.run_shard(records, url, "--bisect", "--max-retries", "0")
        self.assertEqual([s for seqs, _ in self.fake_lambda.calls if poison not in seqs for s in seqs],
                         [seq_of(0), seq_of(1), seq_of(2)])
        self.assertEqual(len(self.sent), 1)
        self.assert_invocation_record(self.sent[0], "RetryAttemptsExhausted", poison, poison, 1)


class RetriesTest(RunnerTestCase):
    def test_retries_exhausted_sends_one_destination_message(self):
        records = [make_record(i) for i in range(3)]
        url = self.serve(lambda n, seqs, e: function_error())
        streams = self.run_shard(records, url, "--no-bisect", "--max-retries", "2")

        self.assertEqual([seqs for seqs, _ in self.fake_lambda.calls], [[seq_of(0), seq_of(1), seq_of(2)]] * 3)
        # Each retry re-read the shard at the batch's first record.
        self.assertIn(("get_shard_iterator", "AT_SEQUENCE_NUMBER", seq_of(0)), streams.calls)
        self.assertEqual(len(self.sent), 1)
        msg = self.sent[0]
        self.assert_invocation_record(msg, "RetryAttemptsExhausted", seq_of(0), seq_of(2), 3)
        self.assertEqual(msg["requestContext"]["approximateInvokeCount"], 3)
        self.assertEqual(self.failure_lines()[0]["requestContext"], msg["requestContext"])

    def test_item_failures_resume_at_the_failed_record(self):
        records = [make_record(i) for i in range(5)]
        url = self.serve(lambda n, seqs, e: item_failures(seq_of(3), seq_of(2)) if n == 1 else OK)
        streams = self.run_shard(records, url, "--no-bisect")
        self.assertEqual([seqs for seqs, _ in self.fake_lambda.calls],
                         [[seq_of(i) for i in range(5)], [seq_of(i) for i in range(2, 5)]])
        self.assertIn(("get_shard_iterator", "AT_SEQUENCE_NUMBER", seq_of(2)), streams.calls)
        self.assertEqual(self.sent, [])

    def test_item_failures_with_bisect_retry_only_the_remaining_records(self):
        records = [make_record(i) for i in range(5)]
        url = self.serve(lambda n, seqs, e: item_failures(seq_of(3)))
        self.run_shard(records, url, "--bisect", "--max-retries", "1")
        # Record 3 failed in the first invocation, then had its one retry (with record 4 only).
        self.assertEqual([seqs for seqs, _ in self.fake_lambda.calls],
                         [[seq_of(i) for i in range(5)], [seq_of(3), seq_of(4)]])
        self.assertEqual(len(self.sent), 1)
        self.assert_invocation_record(self.sent[0], "RetryAttemptsExhausted", seq_of(3), seq_of(4), 2)
        self.assertNotIn("functionError", self.sent[0]["responseContext"])

    def test_duplicate_delivers_every_batch_twice(self):
        records = [make_record(i) for i in range(3)]
        url = self.serve(lambda n, seqs, e: OK)
        self.run_shard(records, url, "--duplicate")
        self.assertEqual([seqs for seqs, _ in self.fake_lambda.calls], [[seq_of(0), seq_of(1), seq_of(2)]] * 2)


class ParallelizationTest(RunnerTestCase):
    """ParallelizationFactor > 1: lanes by partition key, each in order, side by side."""

    def keyed(self, n, keys):
        return [make_record(i, key=f"exec-{i % keys}") for i in range(n)]

    def test_lanes_deliver_every_record_once_each_key_in_order(self):
        records = self.keyed(60, 6)
        url = self.serve(lambda n, seqs, e: (200, {}, b"null", 0.01))
        self.run_shard(records, url, "--parallelization-factor", "4", "--batch-size", "10")
        calls = self.fake_lambda.calls
        delivered = [sq for seqs, _ in calls for sq in seqs]
        self.assertEqual(sorted(delivered, key=runner.seq_key), [seq_of(i) for i in range(60)])
        key_of = {seq_of(i): f"exec-{i % 6}" for i in range(60)}
        for k in range(6):
            mine = [sq for sq in delivered if key_of[sq] == f"exec-{k}"]
            self.assertEqual(mine, sorted(mine, key=runner.seq_key), f"exec-{k} out of order")
        for seqs, _ in calls:  # a batch never mixes lanes
            self.assertEqual(len({runner.Runner.lane_of(self.runner_stub, self.rec_of[sq], 4)
                                  for sq in seqs}), 1)
        lanes = {line.get("lane") for line in LOGS if line.get("event") == "batch"}
        self.assertGreater(len(lanes), 1, "the records went through more than one lane")

    def test_a_failing_key_holds_only_its_own_lane(self):
        records = self.keyed(40, 8)
        poison = "exec-0"
        key_of = {seq_of(i): f"exec-{i % 8}" for i in range(40)}

        def script(n, seqs, e):
            return function_error() if any(key_of[sq] == poison for sq in seqs) else OK

        url = self.serve(script)
        self.run_shard(records, url, "--parallelization-factor", "4", "--bisect",
                       "--max-retries", "1")
        ok = [sq for seqs, _ in self.fake_lambda.calls
              if all(key_of[sq] != poison for sq in seqs) for sq in seqs]
        self.assertEqual(sorted(ok, key=runner.seq_key),
                         [seq_of(i) for i in range(40) if i % 8 != 0])
        given_up = [sq for m in self.failure_lines() for sq in m["runner"]["sequenceNumbers"]]
        self.assertEqual(sorted(given_up, key=runner.seq_key),
                         [seq_of(i) for i in range(40) if i % 8 == 0])

    def setUp(self):
        super().setUp()
        self.runner_stub = type("R", (), {"hash_key": None})()
        self.rec_of = {seq_of(i): make_record(i, key=f"exec-{i % 6}") for i in range(60)}


class RecordAgeTest(RunnerTestCase):
    def test_records_older_than_the_maximum_age_are_not_delivered(self):
        records = [make_record(i, age_s=7200) for i in range(3)] + [make_record(i) for i in (3, 4)]
        url = self.serve(lambda n, seqs, e: OK)
        self.run_shard(records, url, "--max-record-age", "3600")
        self.assertEqual([seqs for seqs, _ in self.fake_lambda.calls], [[seq_of(3), seq_of(4)]])
        self.assertEqual(len(self.sent), 1)
        msg = self.sent[0]
        self.assert_invocation_record(msg, "RecordAgeExceeded", seq_of(0), seq_of(2), 3)
        self.assertEqual(msg["requestContext"]["approximateInvokeCount"], 0)
        self.assertNotIn("responseContext", msg)  # never invoked

    def test_a_failing_record_is_retried_until_it_is_too_old(self):
        # The record is fresh when the runner starts (3 s of age allowed: a loaded machine may
        # take a second before the first read) and keeps failing until it is too old.
        records = [make_record(0)]
        url = self.serve(lambda n, seqs, e: function_error())
        self.run_shard(records, url, "--max-retries", "-1", "--max-record-age", "3",
                       "--retry-max-delay", "0.05")
        self.assertGreater(len(self.fake_lambda.calls), 1)
        self.assertEqual(len(self.sent), 1)
        msg = self.sent[0]
        self.assert_invocation_record(msg, "RecordAgeExceeded", seq_of(0), seq_of(0), 1)
        self.assertEqual(msg["requestContext"]["approximateInvokeCount"], len(self.fake_lambda.calls))
        self.assertEqual(msg["responseContext"]["functionError"], "Unhandled")

    def test_an_unreachable_function_uses_no_retry(self):
        # Connection refused is not an invocation: retried past MaximumRetryAttempts 0 until the
        # record is too old (AWS: "Before invocation ... retries until the records expire or
        # exceed the maximum age").
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.run_shard([make_record(0)], f"http://127.0.0.1:{port}", "--max-retries", "0",
                       "--max-record-age", "0.5", "--retry-max-delay", "0.05")
        self.assertEqual(len(self.sent), 1)
        self.assert_invocation_record(self.sent[0], "RecordAgeExceeded", seq_of(0), seq_of(0), 1)
        self.assertEqual(self.sent[0]["requestContext"]["approximateInvokeCount"], 0)


class TimeoutTest(RunnerTestCase):
    def test_an_invocation_slower_than_the_timeout_is_a_function_error(self):
        # The answer would come after 2 s (a success): a timed-out result shows the wait was cut.
        url = self.serve(lambda n, seqs, e: (200, {}, b"null", 2.0 if n == 1 else 0))
        invoker = runner.Invoker(url, "orchestrator", 0.3)
        event = runner.event_record(make_record(0), STREAM_ARN, "us-east-1")
        result = invoker.invoke(runner.event_body([json.dumps(event).encode()]), [seq_of(0)])
        self.assertEqual(result.status, "error")
        self.assertIn("timed out", result.detail)
        self.assertEqual(result.response_context(),
                         {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"})

    def test_timeouts_are_retried_then_given_up(self):
        url = self.serve(lambda n, seqs, e: (200, {}, b"null", 0.6))
        self.run_shard([make_record(0)], url, "--function-timeout", "0.2", "--max-retries", "1")
        self.assertEqual(len(self.fake_lambda.calls), 2)
        self.assertEqual(len(self.sent), 1)
        self.assert_invocation_record(self.sent[0], "RetryAttemptsExhausted", seq_of(0), seq_of(0), 1)
        self.assertIn("timed out", self.failure_lines()[0]["runner"]["detail"])


class PayloadCapTest(RunnerTestCase):
    def test_a_batch_over_6_mb_is_split(self):
        records = [make_record(i, pad=1_000_000) for i in range(8)]  # ~8 MB of events
        url = self.serve(lambda n, seqs, e: OK)
        self.run_shard(records, url)
        calls = self.fake_lambda.calls
        self.assertEqual([len(seqs) for seqs, _ in calls], [6, 2])
        for _, size in calls:
            self.assertLessEqual(size, 6_291_456)
        self.assertEqual(self.fake_lambda.delivered_ok(), [seq_of(i) for i in range(8)])
        self.assertEqual(self.sent, [])

    def test_a_single_record_over_6_mb_is_a_function_error(self):
        records = [make_record(0), make_record(1, pad=6_300_000), make_record(2)]
        url = self.serve(lambda n, seqs, e: OK)
        self.run_shard(records, url, "--bisect", "--max-retries", "0")
        self.assertEqual(self.fake_lambda.delivered_ok(), [seq_of(0), seq_of(2)])  # never sent
        self.assertEqual(len(self.sent), 1)
        msg = self.sent[0]
        self.assert_invocation_record(msg, "RetryAttemptsExhausted", seq_of(1), seq_of(1), 1)
        self.assertEqual(msg["responseContext"]["statusCode"], 413)
        self.assertEqual(msg["requestContext"]["approximateInvokeCount"], 0)

    def test_fitting_prefix_matches_the_serialised_event(self):
        parts = [json.dumps({"k": "v" * n}).encode() for n in (10, 20, 30)]
        body = runner.event_body(parts)
        self.assertEqual(body, json.dumps({"Records": [json.loads(p) for p in parts]}).encode())
        self.assertEqual(runner.fitting_prefix(parts, len(body)), 3)
        self.assertEqual(runner.fitting_prefix(parts, len(body) - 1), 2)


class FakeDDB:
    def describe_table(self, TableName):
        return {"Table": {"TableName": TableName, "LatestStreamArn": STREAM_ARN}}


class FakeStreamsWithShards(FakeStreams):
    def describe_stream(self, StreamArn, ExclusiveStartShardId=None):
        return {"StreamDescription": {"StreamArn": StreamArn, "Shards": [{"ShardId": SHARD}]}}


class FakeSqs:
    def __init__(self):
        self.sent = []

    def get_queue_url(self, QueueName):
        return {"QueueUrl": f"http://127.0.0.1:1/000000000000/{QueueName}"}

    def send_message(self, QueueUrl, MessageBody):
        self.sent.append((QueueUrl, json.loads(MessageBody)))


class RunnerLoopTest(RunnerTestCase):
    def test_the_mapping_finds_the_shard_and_sends_to_the_sqs_queue(self):
        url = self.serve(lambda n, seqs, e: function_error())
        settings = runner.parse_args(
            ["--table", "t", "--lambda-url", url, "--template", str(REPO / "template.yaml"),
             "--prefix", "px", "--max-retries", "0", "--describe-interval", "0.05",
             "--retry-base-delay", "0.001", "--shutdown-grace", "1"])
        sqs = FakeSqs()
        destination = runner.SqsDestination(sqs, queue_name=settings.on_failure_queue_name)
        stop = threading.Event()
        r = runner.Runner(settings, ddb=FakeDDB(),
                          streams=FakeStreamsWithShards([make_record(0), make_record(1)]),
                          destination=destination, region="us-east-1", stop=stop)
        t = threading.Thread(target=r.run, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while len(sqs.sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        t.join(5)
        self.assertFalse(t.is_alive())
        # Bisect (from the template) isolates each record; MaximumRetryAttempts 0 (flag): one
        # message per record, to the queue named by the template.
        self.assertEqual(len(sqs.sent), 2)
        for (queue_url, msg), i in zip(sqs.sent, (0, 1)):
            self.assertEqual(queue_url, "http://127.0.0.1:1/000000000000/px-orchestrator-dlq")
            self.assertEqual(msg["requestContext"]["functionArn"],
                             "arn:aws:lambda:us-east-1:000000000000:function:px-orchestrator")
            self.assertEqual(msg["DDBStreamBatchInfo"]["startSequenceNumber"], seq_of(i))
        self.assertIn("bisect", [line["event"] for line in LOGS])


class TemplateTest(unittest.TestCase):
    TEMPLATE = str(REPO / "template.yaml")

    def test_settings_are_read_from_the_real_template(self):
        s = runner.template_settings(self.TEMPLATE, "OrchestratorFunction", prefix="rs-test")
        self.assertEqual(s["logical_id"], "OrchestratorFunction")
        self.assertEqual(s["event_name"], "TriggerStream")
        self.assertEqual(s["batch_size"], 100)
        self.assertIs(s["bisect"], True)
        self.assertEqual(s["max_retries"], 5)
        self.assertEqual(s["max_record_age"], 3600)
        self.assertEqual(s["parallelization_factor"], 10)
        self.assertIs(s["report_batch_item_failures"], True)
        self.assertEqual(s["starting_position"], "TRIM_HORIZON")
        self.assertEqual(s["function_timeout"], 30.0)  # Globals.Function.Timeout
        self.assertEqual(s["function"], "orchestrator")  # Metadata.BuildProperties.Binary
        self.assertEqual(s["function_name"], "rs-test-orchestrator")
        self.assertEqual(s["on_failure_queue_name"], "rs-test-orchestrator-dlq")
        self.assertEqual(s["filters"], [{"eventName": ["INSERT"]}])
        # The default logical id is the one function with a DynamoDB event.
        self.assertEqual(runner.template_settings(self.TEMPLATE)["logical_id"], "OrchestratorFunction")

    def test_a_function_without_a_stream_event_is_refused(self):
        with self.assertRaises(runner.TemplateError):
            runner.template_settings(self.TEMPLATE, "SweeperFunction")

    def test_flags_override_the_template(self):
        a = runner.parse_args(["--table", "t", "--template", self.TEMPLATE, "--prefix", "p",
                               "--max-record-age", "5", "--max-retries", "1", "--batch-size", "10",
                               "--no-bisect", "--invoke-timeout", "2"])
        self.assertEqual((a.max_record_age, a.max_retries, a.batch_size, a.bisect, a.function_timeout),
                         (5, 1, 10, False, 2))
        self.assertTrue(a.report_batch_item_failures)  # not overridden: from the template
        self.assertEqual(a.on_failure_queue_name, "p-orchestrator-dlq")
        a = runner.parse_args(["--table", "t", "--template", self.TEMPLATE,
                               "--on-failure-queue-url", "http://127.0.0.1:1/000000000000/q"])
        self.assertIsNone(a.on_failure_queue_name)
        self.assertEqual(a.function_timeout, 30.0)

    def test_without_a_template_the_old_defaults_hold(self):
        a = runner.parse_args(["--table", "t"])
        self.assertEqual((a.batch_size, a.max_retries, a.bisect, a.max_record_age, a.function_timeout),
                         (100, 5, False, -1, 300.0))
        self.assertTrue(a.report_batch_item_failures)
        self.assertFalse(a.wants_sqs)
        self.assertEqual(a.filters, [])


class FilterTest(RunnerTestCase):
    def test_records_matching_no_filter_are_dropped(self):
        records = [make_record(0), make_record(1, event_name="REMOVE"), make_record(2)]
        url = self.serve(lambda n, seqs, e: OK)
        self.run_shard(records, url, "--template", str(REPO / "template.yaml"))
        # The template's ParallelizationFactor puts two keys on lanes of their own: each key is in
        # order, the two are not ordered between them.
        self.assertEqual(sorted(self.fake_lambda.delivered_ok()), [seq_of(0), seq_of(2)])
        self.assertEqual(self.worker.position, ("AFTER_SEQUENCE_NUMBER", seq_of(2)))

    def test_filter_rules(self):
        rec = {"eventName": "INSERT", "dynamodb": {"NewImage": {"n": {"N": "5"}, "s": {"S": "abc"}}}}
        m = runner.filter_matches
        self.assertTrue(m({"eventName": ["INSERT", "MODIFY"]}, rec))
        self.assertFalse(m({"eventName": ["REMOVE"]}, rec))
        self.assertTrue(m({"dynamodb": {"NewImage": {"s": {"S": [{"prefix": "ab"}]}}}}, rec))
        self.assertTrue(m({"dynamodb": {"OldImage": [{"exists": False}]}}, rec))
        self.assertFalse(m({"dynamodb": {"NewImage": {"x": {"S": ["abc"]}}}}, rec))
        self.assertTrue(m({"eventName": [{"anything-but": ["REMOVE"]}]}, rec))
        with self.assertRaises(ValueError):
            runner.validate_filter({"eventName": [{"cidr": "10.0.0.0/8"}]})


if __name__ == "__main__":
    unittest.main()
