"""Self-test of localstack/faultproxy.py against a fake upstream; no LocalStack, loopback only.

    python3 -m unittest localstack.tests.test_faultproxy -v     (from the repository root)

Works with the system python3 and with $RULESTREAM_PY: the LocalStack package installed there is a
namespace package like the repo's localstack/ folder, so the two merge (do not add a
localstack/__init__.py: it would hide LocalStack from `python -m localstack.runtime.main` run in the
repo root). The botocore check runs in a subprocess with a python that has botocore (this one,
else $RULESTREAM_PY) and is skipped if there is none.
"""

import http.client
import http.server
import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
import xml.etree.ElementTree as ET

HERE = pathlib.Path(__file__).resolve().parent
PROXY_PY = HERE.parent / "faultproxy.py"
_spec = importlib.util.spec_from_file_location("faultproxy", PROXY_PY)
faultproxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(faultproxy)


def scope(service):
    return (f"AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/{service}/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=deadbeefsignature")


class Echo(http.server.BaseHTTPRequestHandler):
    """Fake upstream: answers 200 with the request body; records what it saw.
    Paths: /chunked answers chunked; /close sends Connection: close; /dropafter closes the
    connection after answering without saying so (a stale keep-alive connection for the proxy)."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        self.server.seen.append({"method": self.command, "path": self.path, "port": self.client_address[1],
                                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        self.send_response(200)
        self.send_header("X-Echo-Method", self.command)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.send_header("Content-Length", "1234" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if self.path == "/dropafter":
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any


def serve(server):
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


class FaultProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.log_path = os.path.join(cls.tmp.name, "calls.log")
        cls.upstream = serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo))
        cls.upstream.seen = []
        upstream = cls.upstream.server_address
        cls.proxy = serve(faultproxy.Proxy(("127.0.0.1", 0), upstream, cls.log_path, seed=7))
        cls.port = cls.proxy.server_address[1]

    @classmethod
    def tearDownClass(cls):
        for s in (cls.proxy, cls.upstream):
            s.shutdown()
            s.server_close()
        cls.tmp.cleanup()

    def setUp(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

    def tearDown(self):
        self.call("DELETE", "/__faults")
        self.conn.close()

    # --- helpers ---

    def call(self, method, path, body=None, headers=None, conn=None):
        conn = conn or self.conn
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()

    def rule(self, **rule):
        resp, body = self.call("POST", "/__faults", json.dumps(rule))
        self.assertEqual(resp.status, 200, body)
        return json.loads(body)["id"]

    def ddb(self, action="PutItem", table="rulestream-steps", exec_id="acme:1234", extra=None):
        doc = {"TableName": table, "Item": {"execution_id": {"S": exec_id}, "note": {"S": "TOPSECRETBODY"}}}
        return self.call("POST", "/", json.dumps({**doc, **(extra or {})}), {
            "X-Amz-Target": f"DynamoDB_20120810.{action}", "Content-Type": "application/x-amz-json-1.0",
            "Authorization": scope("dynamodb")})

    def secrets(self):
        return self.call("POST", "/", json.dumps({"SecretId": "rulestream/redis-token"}), {
            "X-Amz-Target": "secretsmanager.GetSecretValue", "Content-Type": "application/x-amz-json-1.1"})

    def sts(self):
        form = ("Action=AssumeRole&Version=2011-06-15&RoleSessionName=s1&RoleArn="
                "arn%3Aaws%3Aiam%3A%3A000000000000%3Arole%2Fclient-acme")
        return self.call("POST", "/", form, {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Authorization": scope("sts")})

    def s3(self, method="GET", path="/flows/acme/flow.json", body=None):
        return self.call(method, path, body, {"Authorization": scope("s3")})

    def log_lines(self):
        with open(self.log_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def last_log(self):
        return self.log_lines()[-1]

    # --- forwarding ---

    def test_forwards_methods_bodies_and_keeps_alive(self):
        seen = len(self.upstream.seen)
        resp, body = self.s3("PUT", "/b/k?x-id=PutObject", b"payload-1")
        self.assertEqual((resp.status, body, resp.getheader("X-Echo-Method")), (200, b"payload-1", "PUT"))
        sock = self.conn.sock
        resp, body = self.call("POST", "/some/path?q=1&r=2", b"form=1", {"X-Custom": "v"})
        self.assertEqual((resp.status, body), (200, b"form=1"))
        resp, body = self.s3("GET", "/b/k")
        self.assertEqual((resp.status, body), (200, b""))
        resp, body = self.s3("DELETE", "/b/k")
        self.assertEqual(resp.status, 200)
        resp, body = self.s3("HEAD", "/b/k")
        self.assertEqual((resp.status, resp.getheader("Content-Length"), body), (200, "1234", b""))
        self.assertIs(self.conn.sock, sock, "client connection reused")
        got = self.upstream.seen[seen:]
        self.assertEqual([(r["method"], r["path"]) for r in got],
                         [("PUT", "/b/k?x-id=PutObject"), ("POST", "/some/path?q=1&r=2"), ("GET", "/b/k"),
                          ("DELETE", "/b/k"), ("HEAD", "/b/k")])
        self.assertEqual(got[1]["headers"]["x-custom"], "v")
        self.assertEqual(got[1]["headers"]["host"], f"127.0.0.1:{self.port}")
        self.assertEqual(len({r["port"] for r in got}), 1, "one persistent upstream connection")

    def test_chunked_upstream_answer(self):
        resp, body = self.call("GET", "/chunked")
        self.assertEqual((resp.status, body), (200, b"hello chunked world"))
        self.assertIsNone(resp.getheader("Transfer-Encoding"))
        self.assertEqual(resp.getheader("Content-Length"), "19")

    def test_chunked_request_body(self):
        self.conn.request("PUT", "/b/chunky", body=iter([b"abc", b"defg"]), encode_chunked=True)
        resp = self.conn.getresponse()
        self.assertEqual((resp.status, resp.read()), (200, b"abcdefg"))
        self.assertEqual(self.upstream.seen[-1]["headers"]["content-length"], "7")
        self.assertNotIn("transfer-encoding", self.upstream.seen[-1]["headers"])

    def test_upstream_reconnect(self):
        for first in ("/close", "/dropafter"):
            seen = len(self.upstream.seen)
            self.assertEqual(self.call("GET", first)[0].status, 200)
            resp, _ = self.call("GET", "/after")
            self.assertEqual(resp.status, 200, first)
            ports = [r["port"] for r in self.upstream.seen[seen:]]
            self.assertEqual(len(ports), 2)
            self.assertNotEqual(ports[0], ports[1], f"new upstream connection after {first}")

    def test_two_megabytes_with_expect_100_continue(self):
        body = os.urandom(2 * 1024 * 1024)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall((f"PUT /bucket/big.bin HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                       f"Authorization: {scope('s3')}\r\nContent-Length: {len(body)}\r\n"
                       "Expect: 100-continue\r\n\r\n").encode())
            with s.makefile("rb") as f:  # nothing but the interim answer can have arrived yet
                self.assertEqual(f.readline(), b"HTTP/1.1 100 Continue\r\n")
                self.assertEqual(f.readline(), b"\r\n")
            s.sendall(body)
            resp = http.client.HTTPResponse(s, method="PUT")
            resp.begin()
            self.assertEqual((resp.status, resp.read() == body), (200, True))
        up = self.upstream.seen[-1]
        self.assertEqual((up["body"] == body, up["headers"]["content-length"]), (True, str(len(body))))
        self.assertNotIn("expect", up["headers"])
        self.assertEqual(self.last_log()["action"], "PutObject")

    def test_upstream_down_is_502(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()
        proxy = serve(faultproxy.Proxy(("127.0.0.1", 0), dead, os.path.join(self.tmp.name, "dead.log")))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.server_address[1], timeout=5)
            resp, body = self.call("GET", "/x", conn=conn)
            self.assertEqual(resp.status, 502)
            conn.close()
        finally:
            proxy.shutdown()
            proxy.server_close()

    # --- classification and the log ---

    def test_classification_and_log(self):
        self.ddb()
        line = self.last_log()
        self.assertEqual({k: line[k] for k in ("service", "action", "resource", "execution_id", "status")},
                         {"service": "dynamodb", "action": "PutItem", "resource": "rulestream-steps",
                          "execution_id": "acme:1234", "status": 200})
        self.assertIn("ts", line)
        self.ddb("Query", extra={"KeyConditionExpression": "execution_id = :id", "Item": None,
                                 "ExpressionAttributeValues": {":id": {"S": "acme:9"}}})
        self.assertEqual(self.last_log()["execution_id"], "acme:9")
        self.ddb("BatchWriteItem", extra={"TableName": None, "RequestItems": {"t1": [], "t2": []}})
        self.assertEqual(self.last_log()["resource"], "t1,t2")
        self.secrets()
        self.assertEqual({k: self.last_log()[k] for k in ("service", "action", "resource")},
                         {"service": "secretsmanager", "action": "GetSecretValue",
                          "resource": "rulestream/redis-token"})
        self.sts()
        self.assertEqual({k: self.last_log()[k] for k in ("service", "action", "resource")},
                         {"service": "sts", "action": "AssumeRole",
                          "resource": "arn:aws:iam::000000000000:role/client-acme"})
        for method, path, action, resource in [
                ("GET", "/flows/acme/a%20b.json", "GetObject", "flows/acme/a b.json"),
                ("PUT", "/flows/k", "PutObject", "flows/k"), ("HEAD", "/flows/k", "HeadObject", "flows/k"),
                ("GET", "/flows?list-type=2&prefix=a", "ListObjectsV2", "flows"),
                ("DELETE", "/flows", "DeleteBucket", "flows"), ("GET", "/", "ListBuckets", None)]:
            self.s3(method, path, b"" if method in ("PUT", "POST") else None)
            line = self.last_log()
            self.assertEqual((line["service"], line["action"], line["resource"], line["method"]),
                             ("s3", action, resource, method))
        self.call("GET", "/__faults")  # control calls are not logged
        self.assertEqual(self.last_log()["service"], "s3")
        text = pathlib.Path(self.log_path).read_text()
        for secret in ("TOPSECRETBODY", "deadbeefsignature", "RoleSessionName", "application/x-amz"):
            self.assertNotIn(secret, text)

    # --- faults ---

    def assert_json_error(self, resp, body, status, ctype, code):
        self.assertEqual((resp.status, resp.getheader("Content-Type")), (status, ctype))
        self.assertEqual(json.loads(body)["__type"].split("#")[-1], code)
        self.assertTrue(resp.getheader("x-amzn-RequestId"))

    def assert_xml_error(self, resp, body, status, ctype, code):
        self.assertEqual((resp.status, resp.getheader("Content-Type")), (status, ctype))
        self.assertEqual(ET.fromstring(body).find(".//{*}Code").text, code)
        self.assertTrue(resp.getheader("x-amzn-RequestId"))

    def test_faults_per_protocol(self):
        seen = len(self.upstream.seen)
        ddb_ns = "com.amazonaws.dynamodb.v20120810#"
        for fault, code in [("throttle", "ThrottlingException"),
                            ("provisioned_throughput", "ProvisionedThroughputExceededException"),
                            ("access_denied", "AccessDeniedException"),
                            ("not_found", "ResourceNotFoundException")]:
            rid = self.rule(service="dynamodb", fault=fault)
            resp, body = self.ddb()
            self.assert_json_error(resp, body, 400, "application/x-amz-json-1.0", code)
            self.assertTrue(json.loads(body)["__type"].startswith(ddb_ns))
            self.assertEqual({k: self.last_log().get(k) for k in ("fault", "rule", "status")},
                             {"fault": fault, "rule": rid, "status": 400})
            self.rule(service="secretsmanager", fault=fault)
            resp, body = self.secrets()
            self.assert_json_error(resp, body, 400, "application/x-amz-json-1.1", code)
            self.assertNotIn("#", json.loads(body)["__type"])
        self.rule(service="dynamodb", fault="status", status=500)
        self.assert_json_error(*self.ddb(), 500, "application/x-amz-json-1.0", "InternalServerError")
        for fault, status, code in [("throttle", 400, "Throttling"), ("access_denied", 403, "AccessDenied")]:
            self.rule(service="sts", action="AssumeRole", fault=fault)
            resp, body = self.sts()
            self.assert_xml_error(resp, body, status, "text/xml", code)
            root = ET.fromstring(body)
            self.assertEqual(root.tag, "{https://sts.amazonaws.com/doc/2011-06-15/}ErrorResponse")
            self.assertEqual(root.find(".//{*}Type").text, "Sender")
            self.assertTrue(root.find("{*}RequestId").text)
        for fault, status, code, path in [("throttle", 503, "SlowDown", "/b/k"),
                                          ("access_denied", 403, "AccessDenied", "/b/k"),
                                          ("not_found", 404, "NoSuchKey", "/b/k"),
                                          ("not_found", 404, "NoSuchBucket", "/b?list-type=2")]:
            self.rule(service="s3", fault=fault)
            resp, body = self.s3("GET", path)
            self.assert_xml_error(resp, body, status, "application/xml", code)
            self.assertEqual(ET.fromstring(body).tag, "Error")
            self.assertTrue(resp.getheader("x-amz-request-id"))
        self.rule(service="s3", fault="status", status=503, code="ServiceUnavailable")
        self.assert_xml_error(*self.s3(), 503, "application/xml", "ServiceUnavailable")
        self.rule(service="s3", fault="not_found")
        resp, body = self.s3("HEAD", "/b/k")
        self.assertEqual((resp.status, body), (404, b""))
        self.assertEqual(len(self.upstream.seen), seen, "faulted calls are not forwarded")
        self.assertEqual(self.s3()[0].status, 200, "all rules used up (times 1)")

    def test_fault_on_expect_100_put(self):
        self.rule(service="s3", action="PutObject", fault="access_denied")
        headers = {"Expect": "100-continue", "Authorization": scope("s3")}
        resp, body = self.call("PUT", "/b/k", b"x" * 1000, headers)
        self.assert_xml_error(resp, body, 403, "application/xml", "AccessDenied")
        self.assertEqual(self.s3()[0].status, 200, "connection still usable")

    def test_matching_times_and_delete(self):
        self.rule(service="dynamodb", resource_contains="executions", fault="throttle", times=2)
        self.rule(id="body", body_contains="acme:77", fault="access_denied", times=-1)
        self.assertEqual(self.ddb()[0].status, 200)  # other table, other execution
        statuses = [self.ddb(table="rulestream-executions")[0].status for _ in range(3)]
        self.assertEqual(statuses, [400, 400, 200])
        for _ in range(3):
            self.assertIn(b"AccessDenied", self.ddb(exec_id="acme:77")[1])
        first, body_rule = json.loads(self.call("GET", "/__faults")[1])["rules"]
        self.assertEqual((first["fired"], first["times"]), (2, 0))
        self.assertEqual((body_rule["fired"], body_rule["times"]), (3, -1))
        self.assertEqual(self.call("DELETE", "/__faults/nope")[0].status, 404)
        resp, body = self.call("DELETE", "/__faults/body")
        self.assertEqual((resp.status, json.loads(body)), (200, {"deleted": 1}))
        self.assertEqual(self.ddb(exec_id="acme:77")[0].status, 200)
        self.rule(fault="throttle", times=-1)
        self.assertEqual(json.loads(self.call("DELETE", "/__faults")[1])["deleted"], 2)
        self.assertEqual(json.loads(self.call("GET", "/__faults")[1]), {"rules": []})
        self.assertEqual(self.ddb()[0].status, 200)

    def test_probability(self):
        rid = self.rule(fault="throttle", times=-1, probability=0)
        self.assertEqual({self.ddb()[0].status for _ in range(20)}, {200})
        self.call("DELETE", f"/__faults/{rid}")
        rid = self.rule(fault="throttle", times=-1, probability=0.5)
        statuses = [self.ddb()[0].status for _ in range(40)]
        self.assertTrue(0 < statuses.count(400) < 40, statuses)
        [rule] = json.loads(self.call("GET", "/__faults")[1])["rules"]
        self.assertEqual((rule["id"], rule["fired"]), (rid, statuses.count(400)))

    def test_bad_rules(self):
        for rule in ({"fault": "explode"}, {"fault": "status"}, {"fault": "status", "status": 99},
                     {"fault": "throttle", "times": 0}, {"fault": "throttle", "probability": 2},
                     {"fault": "throttle", "tmes": 3}, [1]):
            resp, body = self.call("POST", "/__faults", json.dumps(rule))
            self.assertEqual(resp.status, 400, rule)
            self.assertIn("error", json.loads(body))
        self.assertEqual(self.call("POST", "/__faults", b"{not json")[0].status, 400)
        self.assertEqual(self.call("PUT", "/__faults")[0].status, 405)

    # --- command line ---

    def test_refuses_non_loopback(self):
        for argv in (["--listen", "127.0.0.1:0", "--upstream", "http://10.0.0.1:4566"],
                     ["--listen", "127.0.0.1:0", "--upstream", "http://example.com:4566"],
                     ["--listen", "127.0.0.1:0", "--upstream", "https://127.0.0.1:4566"],
                     ["--listen", "0.0.0.0:8080", "--upstream", "http://127.0.0.1:4566"]):
            p = subprocess.run([sys.executable, str(PROXY_PY), *argv], capture_output=True, text=True,
                               timeout=5)
            self.assertEqual(p.returncode, 2, argv)
            self.assertIn("loopback", p.stderr)

    def test_subprocess_sigterm(self):
        log_path = os.path.join(self.tmp.name, "sub.log")
        p = subprocess.Popen([sys.executable, str(PROXY_PY), "--listen", "127.0.0.1:0", "--upstream",
                              "http://127.0.0.1:%d" % self.upstream.server_address[1], "--log", log_path],
                             stdout=subprocess.PIPE, text=True)
        try:
            started = json.loads(p.stdout.readline())
            self.assertEqual(started["event"], "proxy_started")
            conn = http.client.HTTPConnection("127.0.0.1", started["port"], timeout=5)
            resp, _ = self.call("GET", "/b/k", headers={"Authorization": scope("s3")}, conn=conn)
            self.assertEqual(resp.status, 200)
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(timeout=5), 0)
            self.assertIn('"proxy_stopped"', p.stdout.read())
            conn.close()
            with open(log_path) as f:
                self.assertEqual(json.loads(f.readline())["action"], "GetObject")
        finally:
            if p.poll() is None:
                p.kill()
            p.stdout.close()

    # --- the SDK's error parsing (botocore shares the protocols with aws-sdk-rust) ---

    def test_botocore_parses_the_errors(self):
        python = botocore_python()
        if python is None:
            self.skipTest("no python with botocore")
        for rule in ({"service": "dynamodb", "action": "PutItem", "fault": "throttle"},
                     {"service": "dynamodb", "action": "GetItem", "fault": "provisioned_throughput"},
                     {"service": "secretsmanager", "fault": "access_denied"},
                     {"service": "sts", "action": "AssumeRole", "fault": "access_denied"},
                     {"service": "sts", "action": "GetCallerIdentity", "fault": "throttle"},
                     {"service": "s3", "action": "GetObject", "fault": "not_found"},
                     {"service": "s3", "action": "PutObject", "fault": "throttle"}):
            self.rule(**rule)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
               "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "*"}
        p = subprocess.run([python, "-c", BOTO_SCRIPT, f"http://127.0.0.1:{self.port}"], env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout), {
            "put_item": [400, "ThrottlingException", True],
            "get_item": [400, "ProvisionedThroughputExceededException", True],
            "get_secret_value": [400, "AccessDeniedException", False],
            "assume_role": [403, "AccessDenied", False],
            "get_caller_identity": [400, "Throttling", True],
            "get_object": [404, "NoSuchKey", False],
            "put_object": [503, "SlowDown", True]})
        self.assertEqual([r["times"] for r in json.loads(self.call("GET", "/__faults")[1])["rules"]], [0] * 7)


BOTO_SCRIPT = r"""
import json, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker

url = sys.argv[1]
cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"})
def client(name):
    return boto3.client(name, endpoint_url=url, region_name="us-east-1", config=cfg)
ddb, sm, sts, s3 = client("dynamodb"), client("secretsmanager"), client("sts"), client("s3")
key = {"execution_id": {"S": "acme:1"}}
role = "arn:aws:iam::000000000000:role/client-acme"
calls = {
    "put_item": lambda: ddb.put_item(TableName="t", Item=key),
    "get_item": lambda: ddb.get_item(TableName="t", Key=key),
    "get_secret_value": lambda: sm.get_secret_value(SecretId="s"),
    "assume_role": lambda: sts.assume_role(RoleArn=role, RoleSessionName="e2e"),
    "get_caller_identity": lambda: sts.get_caller_identity(),
    "get_object": lambda: s3.get_object(Bucket="b", Key="k"),
    "put_object": lambda: s3.put_object(Bucket="b", Key="k", Body=b"x" * 2048),
}
throttled = ThrottledRetryableChecker()  # botocore's list of throttling codes (the SDK retries those)
out = {}
for name, call in calls.items():
    try:
        call()
        out[name] = "no error"
    except ClientError as e:
        r = e.response
        ctx = RetryContext(attempt_number=1, parsed_response=r)
        out[name] = [r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], throttled.is_retryable(ctx)]
print(json.dumps(out))
"""


def botocore_python():
    """A python that can import botocore: this one, else the tools venv's; None if there is none."""
    if importlib.util.find_spec("botocore"):
        return sys.executable
    venv = os.environ.get("RULESTREAM_VENV") or os.path.expanduser("~/.cache/rulestream-tools/venv")
    for python in (os.environ.get("RULESTREAM_PY"), os.path.join(venv, "bin", "python")):
        if python and os.access(python, os.X_OK) and subprocess.run(
                [python, "-c", "import botocore"], capture_output=True, timeout=30).returncode == 0:
            return python
    return None


if __name__ == "__main__":
    unittest.main()
