"""Smoke test of a running local stack (after up.sh and provision.py); exits non-zero on failure.

    source localstack/env.sh && "$RULESTREAM_PY" localstack/smoke.py

1. PutItem into <prefix>-trigger and read it back through the DynamoDB Streams API.
2. Redis PING + EVAL, over TLS (server certificate checked against REDIS_CA_FILE) with the AUTH
   token inside REDIS_URL (rediss://:TOKEN@127.0.0.1:PORT), as the functions connect.
3. Kafka produce/consume round trip (consumer group) against tansu.
Everything talks to the endpoints in env.sh (127.0.0.1).
"""

import os
import time
import uuid

import boto3
import redis
from kafka import KafkaConsumer, KafkaProducer

PREFIX = os.environ.get("RULESTREAM_PREFIX", "rulestream")
DEADLINE_S = 30


def check_stream():
    ddb, streams = boto3.client("dynamodb"), boto3.client("dynamodbstreams")
    table = f"{PREFIX}-trigger"
    eid = f"smoke:{uuid.uuid4()}"  # <client_id>:<unique> (SPEC section 3)
    t0 = time.time()
    ddb.put_item(TableName=table, Item={
        "execution_id": {"S": eid}, "seq": {"N": "0"}, "client_id": {"S": "smoke"},
        "flow_id": {"S": "smoke"}, "input": {"M": {"x": {"N": "1"}}},
        "expires_at": {"N": str(int(time.time()) + 3600)}})
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shards = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    iters = [streams.get_shard_iterator(StreamArn=arn, ShardId=s["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"] for s in shards]
    while time.time() - t0 < DEADLINE_S:
        for i, it in enumerate(iters):
            if not it:
                continue
            out = streams.get_records(ShardIterator=it, Limit=1000)
            iters[i] = out.get("NextShardIterator")
            for r in out["Records"]:
                img = r["dynamodb"].get("NewImage", {})
                if img.get("execution_id", {}).get("S") == eid:
                    assert r["eventName"] == "INSERT", r
                    assert r["dynamodb"]["StreamViewType"] == "NEW_IMAGE", r
                    print(f"smoke: stream ok: {r['eventName']} {eid} seq={img['seq']['N']} "
                          f"({len(shards)} shard(s), {time.time() - t0:.2f}s)")
                    return
        time.sleep(0.2)
    raise SystemExit(f"smoke: ERROR: {eid} never appeared on {arn}")


def check_redis():
    url = os.environ["REDIS_URL"]
    # rediss:// = TLS; the local CA is not in the system roots, so it is named explicitly.
    kwargs = {"ssl_ca_certs": os.environ["REDIS_CA_FILE"]} if os.environ.get("REDIS_CA_FILE") else {}
    r = redis.Redis.from_url(url, socket_timeout=DEADLINE_S, **kwargs)
    assert r.ping()
    assert r.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "smoke:n", 2) >= 2
    print(f"smoke: redis ok (PING, EVAL{', TLS' if url.startswith('rediss://') else ''})")


def check_kafka():
    brokers = os.environ["KAFKA_BROKERS"].split(",")
    topic, key, value = f"{PREFIX}.smoke", b"smoke/key", uuid.uuid4().hex.encode()
    t0 = time.time()
    producer = KafkaProducer(bootstrap_servers=brokers)
    producer.send(topic, key=key, value=value).get(timeout=DEADLINE_S)  # tansu auto-creates the topic
    producer.close()
    # A short session timeout: tansu delays a group join by about half of it (default 45 s: ~23 s).
    consumer = KafkaConsumer(topic, bootstrap_servers=brokers, group_id=f"smoke-{uuid.uuid4().hex[:8]}",
                             auto_offset_reset="earliest", session_timeout_ms=3000,
                             heartbeat_interval_ms=1000, consumer_timeout_ms=DEADLINE_S * 1000)
    try:
        for msg in consumer:
            if msg.key == key and msg.value == value:
                consumer.commit()
                print(f"smoke: kafka ok: {topic} partition {msg.partition} offset {msg.offset} "
                      f"({time.time() - t0:.2f}s)")
                return
    finally:
        consumer.close()
    raise SystemExit(f"smoke: ERROR: message not consumed from {topic}")


if __name__ == "__main__":
    check_stream()
    check_redis()
    check_kafka()
    print("smoke: all ok")
