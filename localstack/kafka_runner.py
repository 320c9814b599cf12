"""Local MSK event source mapping: feeds a Kafka topic (tansu) to a function served by
`cargo lambda watch`, the way AWS Lambda's MSK event source does.

    source localstack/env.sh
    "$RULESTREAM_PY" -u localstack/kafka_runner.py --topic "$RULESTREAM_PREFIX.releases" \\
        [--function release-bridge] [--lambda-url http://127.0.0.1:$RULESTREAM_LAMBDA_PORT] \\
        [--brokers $KAFKA_BROKERS] [--batch-size 100] [--offsets-file PATH]

What it does, as AWS does:
- Reads every partition of the topic (found again every few seconds, so a topic created after the
  start, or partitions added, are picked up) from the earliest offset (--starting-position
  TRIM_HORIZON, the template's) or the latest (LATEST), or from the offsets saved in
  --offsets-file by an earlier run (the mapping's committed offsets).
- Each poll's records of one partition become one event, in offset order, built exactly like the
  one Lambda delivers for MSK:
  {"eventSource": "aws:kafka", "eventSourceArn": <cluster ARN>, "bootstrapServers": <brokers>,
   "records": {"<topic>-<partition>": [{"topic", "partition", "offset", "timestamp" (epoch ms),
   "timestampType": "CREATE_TIME", "key": <base64>, "value": <base64>, "headers": [{name: [bytes
   as signed integers]}]}]}}
- The event is POSTed to the Lambda Invoke API. A function error (non-2xx, X-Amz-Function-Error,
  an `errorType` in the body) or no answer retries the same batch with backoff (1, 2, 4 … 30 s), as
  the MSK event source retries until the records expire: the partition makes no progress past a
  failing batch, and the offsets are saved only after a success.

Standard library plus kafka-python (in the tools venv). Logs one JSON line per batch.
"""

import argparse
import base64
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

STOP = False


def log(event, **fields):
    print(json.dumps({"t": round(time.time(), 3), "event": event, **fields}), flush=True)


def signed(b):
    return [x - 256 if x > 127 else x for x in b]


def kafka_record(rec):
    """One record as Lambda's MSK event carries it."""
    return {
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "timestamp": rec.timestamp,
        "timestampType": "CREATE_TIME" if rec.timestamp_type in (0, None) else "LOG_APPEND_TIME",
        "key": base64.b64encode(rec.key).decode() if rec.key is not None else None,
        "value": base64.b64encode(rec.value).decode() if rec.value is not None else None,
        "headers": [{k: signed(v or b"")} for k, v in (rec.headers or [])],
    }


def event_of(topic, partition, records, brokers, cluster_arn):
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": cluster_arn,
        "bootstrapServers": brokers,
        "records": {f"{topic}-{partition}": [kafka_record(r) for r in records]},
    }


def invoke(url, body, timeout):
    """True when the function answered without an error."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode(errors="replace")
            if r.headers.get("X-Amz-Function-Error"):
                return False, text[:300]
            try:
                doc = json.loads(text) if text else None
            except ValueError:
                doc = None
            if isinstance(doc, dict) and doc.get("errorType"):
                return False, text[:300]
            return True, text[:300]
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}: {e.read()[:300]!r}"
    except (urllib.error.URLError, OSError) as e:
        return False, str(e)


def load_offsets(path):
    try:
        with open(path) as f:
            return {int(k): int(v) for k, v in json.load(f).items()}
    except (OSError, ValueError):
        return {}


def save_offsets(path, offsets):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({str(k): v for k, v in offsets.items()}, f)
    os.replace(tmp, path)


def run(args):
    from kafka import KafkaConsumer, TopicPartition

    url = f"{args.lambda_url}/2015-03-31/functions/{args.function}/invocations"
    consumer = KafkaConsumer(bootstrap_servers=args.brokers.split(","), group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000, request_timeout_ms=30000)
    offsets = load_offsets(args.offsets_file) if args.offsets_file else {}
    assigned = set()
    last_refresh = 0.0
    log("start", topic=args.topic, function=args.function, offsets=offsets)
    while not STOP:
        if time.monotonic() - last_refresh > 2.0:
            last_refresh = time.monotonic()
            parts = consumer.partitions_for_topic(args.topic) or set()
            if parts - assigned:
                assigned = set(parts)
                tps = [TopicPartition(args.topic, p) for p in sorted(assigned)]
                consumer.assign(tps)
                for tp in tps:
                    if tp.partition in offsets:
                        consumer.seek(tp, offsets[tp.partition])
                    elif args.starting_position == "LATEST":
                        consumer.seek_to_end(tp)
                        offsets[tp.partition] = consumer.position(tp)
                    else:
                        consumer.seek_to_beginning(tp)
                log("assigned", partitions=sorted(assigned))
        if not assigned:
            time.sleep(args.poll_interval)
            continue
        polled = consumer.poll(timeout_ms=int(args.poll_interval * 1000), max_records=args.batch_size)
        for tp, records in sorted(polled.items(), key=lambda kv: kv[0].partition):
            records = sorted(records, key=lambda r: r.offset)
            event = event_of(tp.topic, tp.partition, records, args.brokers, args.cluster_arn)
            delay = 1.0
            while not STOP:
                ok, detail = invoke(url, event, args.timeout)
                log("batch", partition=tp.partition, first=records[0].offset,
                    last=records[-1].offset, count=len(records), ok=ok, detail=detail)
                if ok:
                    break
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
            if STOP:
                break
            offsets[tp.partition] = records[-1].offset + 1
            if args.offsets_file:
                save_offsets(args.offsets_file, offsets)
    consumer.close()
    log("stop")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topic", required=True)
    p.add_argument("--function", default="release-bridge")
    p.add_argument("--lambda-url",
                   default=f"http://127.0.0.1:{os.environ.get('RULESTREAM_LAMBDA_PORT', '9000')}")
    p.add_argument("--brokers", default=os.environ.get("KAFKA_BROKERS", "127.0.0.1:19092"))
    p.add_argument("--cluster-arn",
                   default="arn:aws:kafka:us-east-1:000000000000:cluster/rulestream-local/local")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--poll-interval", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=60.0, help="invoke timeout, seconds")
    p.add_argument("--offsets-file", help="where the committed offsets are kept between runs")
    p.add_argument("--starting-position", choices=["TRIM_HORIZON", "LATEST"], default="TRIM_HORIZON",
                   help="where a partition without a saved offset is read from (the template's StartingPosition)")
    args = p.parse_args()

    def stop(_signum, _frame):
        global STOP
        STOP = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
