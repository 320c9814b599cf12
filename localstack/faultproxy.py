"""Fault-injecting HTTP proxy for the local AWS endpoint: logs the AWS calls a function makes and
answers chosen ones itself with throttling, AccessDenied, not-found or any status, in the real
service's error format, so the SDK (Rust or boto3) parses and retries them as on AWS.

    python3 localstack/faultproxy.py --listen 127.0.0.1:PORT [--upstream http://127.0.0.1:4566] \\
        [--log FILE] [--seed N] [--timeout SECS]
    AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:PORT AWS_ENDPOINT_URL_S3=... AWS_ENDPOINT_URL_STS=... \\
        AWS_ENDPOINT_URL_SECRETS_MANAGER=... <function>        (or AWS_ENDPOINT_URL for all)
    curl -s 127.0.0.1:PORT/__faults -d '{"service":"dynamodb","action":"PutItem","fault":"throttle"}'
A test starts it with --listen 127.0.0.1:0, reads "port" from its first stdout line, starts the
function with those variables, POSTs rules, drives the function, reads the --log lines, and ends
with DELETE /__faults (or SIGTERM). Self-test: python3 -m unittest localstack.tests.test_faultproxy

Forwarding: every request goes upstream with method, path, query, headers and body unchanged, but
for hop-by-hop headers and Expect (`Expect: 100-continue` is answered here; the body, Content-Length
or chunked, is read whole and sent with a Content-Length), on one persistent upstream connection per
client connection (a stale one is retried once). The answer is read whole and sent back with a
Content-Length (HEAD keeps the upstream's). Upstream down: 502; silent for --timeout s: 504.

Classification: service from the SigV4 credential scope, else X-Amz-Target. Action: X-Amz-Target
(`DynamoDB_20120810.PutItem` -> PutItem), else `Action` of a query-protocol call (STS), else for S3
(path-style) GetObject, PutObject, HeadObject, DeleteObject, ListObjects(V2), CreateBucket, ...
from method and path, else the method. Resource: TableName (batch calls: their tables), SecretId,
RoleArn, QueueUrl, StreamArn, S3 bucket/key, else the path. execution_id: DynamoDB Key/Item execution_id
{"S": ..}, or the value bound to `execution_id = :v` in a KeyConditionExpression.

Log (--log, appended; default stdout): one JSON line per AWS call, written before the answer goes
out, never a body or header value: {"ts", "service", "action", "method", "resource",
"execution_id"?, "status", "ms", "fault"?, "rule"?, "error"?}. stdout starts with
{"event": "proxy_started", "port", ...}: with --listen 127.0.0.1:0 that is how to learn the port.

Control API on the same port, under /__faults (never forwarded, not logged):
  POST /__faults {"id"?, "service"?, "action"?, "resource_contains"?, "body_contains"?, "fault":
      "throttle"|"provisioned_throughput"|"access_denied"|"not_found"|"status", "status"?, "code"?,
      "message"?, "times"?: int (default 1; -1 = always), "probability"?: 0..1 (default 1)}
      -> {"id"} (an existing id is replaced; a bad rule: 400 {"error"})
  GET /__faults -> {"rules": [rule + "fired"]} ("times": what is left)
  DELETE /__faults/<id> -> {"deleted": 1} (404 if unknown);  DELETE /__faults -> {"deleted": n}
A rule matches if all its fields do: service (any case), action (or the HTTP method),
resource_contains / body_contains (substring of the resource / raw body). The first matching rule
(insertion order) with times left that wins its probability draw (random.Random(--seed)) answers
the call instead of the upstream, with an x-amzn-RequestId header and:
  JSON (DynamoDB, Secrets Manager): 400, the request's Content-Type, {"__type", "message"}:
    ThrottlingException, ProvisionedThroughputExceededException, AccessDeniedException,
    ResourceNotFoundException (DynamoDB's prefixed with com.amazonaws.dynamodb.v20120810#).
  Query (STS): text/xml ErrorResponse/Error/{Type,Code,Message}: 400 Throttling, 403 AccessDenied,
    404 NotFound.  Other REST services (not S3): the JSON 1.1 answers.
  S3: application/xml Error/{Code,Message,RequestId}: 503 SlowDown, 403 AccessDenied, 404 NoSuchKey
    (NoSuchBucket without a key); HEAD answers have no body.
  "status": that status, code InternalServerError / InternalFailure / InternalError (503:
    ServiceUnavailable, < 500: BadRequest); "status", "code", "message" override any kind.
The SDKs retry throttling errors and 5xx (the Rust SDK: 3 attempts by default): a `times: 1`
throttle is absorbed by the retry, `times: 3` or -1 fails the call. AccessDenied is not retried.

SIGTERM / SIGINT stop it (exit 0). Loopback only: another --listen or --upstream is refused, and no
name is resolved.
"""

import argparse
import http.client
import http.server
import ipaddress
import json
import os
import random
import re
import signal
import socketserver
import sys
import threading
import time
import urllib.parse
import uuid
from xml.sax.saxutils import escape

STOP = threading.Event()
# Not forwarded as they are: hop-by-hop headers, Expect (answered here) and the body framing.
HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
       "te", "trailer", "transfer-encoding", "upgrade", "expect", "content-length"}
SCOPE = re.compile(r"/\d{8}/[\w-]+/([\w.-]+)/aws4_request")
TARGETS = {"amazonsqs": "sqs", "awsevents": "events"}  # X-Amz-Target prefix -> service, if not itself
RESOURCE_FIELDS = ("TableName", "SecretId", "StreamArn", "QueueUrl", "RoleArn", "TopicArn")
S3_ACTIONS = {("GET", True): "GetObject", ("PUT", True): "PutObject", ("HEAD", True): "HeadObject",
              ("DELETE", True): "DeleteObject", ("GET", False): "ListObjects", ("PUT", False): "CreateBucket",
              ("HEAD", False): "HeadBucket", ("DELETE", False): "DeleteBucket"}  # (method, has a key)
KEY_EXEC = re.compile(r"\bexecution_id\s*=\s*(:\w+)")
QUERY_NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/",
            "sqs": "http://queue.amazonaws.com/doc/2012-11-05/"}
DDB_NS = "com.amazonaws.dynamodb.v20120810#"
DENIED = None  # message placeholder: "User ... is not authorized to perform ..."
# (status, code, message) per protocol and kind; provisioned_throughput is throttle outside JSON.
ERRORS = {
    "json": {"throttle": (400, "ThrottlingException", "Rate of requests exceeds the allowed throughput."),
             "provisioned_throughput": (400, "ProvisionedThroughputExceededException",
                                        "The level of configured provisioned throughput was exceeded."),
             "access_denied": (400, "AccessDeniedException", DENIED),
             "not_found": (400, "ResourceNotFoundException", "Requested resource not found")},
    "query": {"throttle": (400, "Throttling", "Rate exceeded"),
              "access_denied": (403, "AccessDenied", DENIED),
              "not_found": (404, "NotFound", "The requested resource does not exist.")},
    "s3": {"throttle": (503, "SlowDown", "Please reduce your request rate."),
           "access_denied": (403, "AccessDenied", "Access Denied"),
           "not_found": (404, "NoSuchKey", "The specified key does not exist.")},
}
SERVER_ERROR = {"json": "InternalServerError", "query": "InternalFailure", "s3": "InternalError"}
KINDS = {"throttle", "provisioned_throughput", "access_denied", "not_found", "status"}


def log(event, **fields):
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str), flush=True)


# --- classification -------------------------------------------------------------------------------

def json_resource(doc):
    """(resource, execution_id) named by a JSON request body; cheap, never raises."""
    if not isinstance(doc, dict):
        return None, None
    resource = next((doc[f] for f in RESOURCE_FIELDS if isinstance(doc.get(f), str)), None)
    if resource is None and isinstance(doc.get("RequestItems"), dict):  # batch calls
        resource = ",".join(doc["RequestItems"])
    attrs = next((a for a in (doc.get("Key"), doc.get("Item")) if isinstance(a, dict)), {})
    m = KEY_EXEC.search(str(doc.get("KeyConditionExpression", "")))
    values = doc.get("ExpressionAttributeValues")
    if "execution_id" not in attrs and m and isinstance(values, dict):  # Query
        attrs = {"execution_id": values.get(m.group(1))}
    value = attrs.get("execution_id")
    exec_id = value.get("S") if isinstance(value, dict) else None
    return resource, exec_id if isinstance(exec_id, str) else None


def classify(method, path, headers, body):
    """{"service", "action", "resource", "method", "protocol", "execution_id"?} of one AWS call."""
    url = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    scope = SCOPE.search(" ".join([headers.get("Authorization", ""), *query.get("X-Amz-Credential", [])]))
    service, target = scope.group(1) if scope else None, headers.get("X-Amz-Target")
    info = {"service": None, "action": method, "resource": None, "method": method}
    form = query
    if "x-www-form-urlencoded" in headers.get("Content-Type", "") and body:
        form = {**query, **urllib.parse.parse_qs(body.decode("utf-8", "replace"))}
    if target:
        prefix = target.partition(".")[0].split("_")[0].lower()
        service = service or TARGETS.get(prefix, prefix)
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        resource, exec_id = json_resource(doc)
        info.update(protocol="json", action=target.partition(".")[2], resource=resource)
        if exec_id is not None:
            info["execution_id"] = exec_id
    elif "Action" in form:
        service = service or "query"
        info.update(protocol="query", action=form["Action"][0],
                    resource=next((form[f][0] for f in RESOURCE_FIELDS if f in form), None))
    elif (service or "s3") == "s3":
        service = "s3"
        bucket, _, key = urllib.parse.unquote(url.path).lstrip("/").partition("/")
        action = S3_ACTIONS.get((method, bool(key)), method) if bucket else "ListBuckets"
        if action == "ListObjects" and query.get("list-type") == ["2"]:
            action = "ListObjectsV2"
        info.update(protocol="s3", action=action, resource=f"{bucket}/{key}" if key else bucket or None)
    else:
        info.update(protocol="rest", resource=url.path)
    info["service"] = service
    return info


# --- faults ---------------------------------------------------------------------------------------

class Faults:
    """The rule list; thread-safe."""
    STRINGS = ("id", "service", "action", "resource_contains", "body_contains", "code", "message")

    def __init__(self, seed=None):
        self.rules, self.lock, self.rng, self.count = [], threading.Lock(), random.Random(seed), 0

    def add(self, rule):
        if not isinstance(rule, dict):
            raise ValueError("a rule is a JSON object")
        unknown = set(rule) - {*self.STRINGS, "fault", "status", "times", "probability"}
        times, prob, status = rule.get("times", 1), rule.get("probability", 1), rule.get("status")
        for error, bad in [
                (f"unknown fields {sorted(unknown)}", unknown),
                ("id, service, action, ..._contains, code, message are strings",
                 any(not isinstance(rule[f], str) for f in self.STRINGS if f in rule)),
                (f"fault must be one of {sorted(KINDS)}", rule.get("fault") not in KINDS),
                ("status must be an integer 100..599", (rule.get("fault") == "status" or status is not None)
                 and not (type(status) is int and 100 <= status <= 599)),
                ("times must be -1 (always) or >= 1", type(times) is not int or times < -1 or times == 0),
                ("probability must be a number in 0..1",
                 type(prob) not in (int, float) or not 0 <= prob <= 1)]:
            if bad:
                raise ValueError(error)
        with self.lock:
            self.count += 1
            rule = {**rule, "id": rule.get("id") or f"r{self.count}", "times": times,
                    "probability": float(prob), "fired": 0}
            self.rules = [r for r in self.rules if r["id"] != rule["id"]] + [rule]
        return rule["id"]

    def match(self, info, body):
        """The rule that fires for this call (counted down), or None."""
        with self.lock:
            for r in self.rules:
                if (r["times"] == 0
                        or ("service" in r and r["service"].lower() != (info["service"] or "").lower())
                        or ("action" in r and r["action"] not in (info["action"], info["method"]))
                        or r.get("resource_contains", "") not in (info["resource"] or "")
                        or r.get("body_contains", "").encode() not in body
                        or (r["probability"] < 1 and self.rng.random() >= r["probability"])):
                    continue
                if r["times"] > 0:  # -1: always
                    r["times"] -= 1
                r["fired"] += 1
                return dict(r)
        return None

    def list(self):
        with self.lock:
            return [dict(r) for r in self.rules]

    def delete(self, rule_id=None):
        """Deletes one rule (or all); returns how many were deleted."""
        with self.lock:
            kept = [r for r in self.rules if rule_id is not None and r["id"] != rule_id]
            deleted, self.rules = len(self.rules) - len(kept), kept
        return deleted


def fault_response(rule, info, headers):
    """(status, headers, body) the real service sends for this fault, in the call's protocol."""
    proto, service, kind = info["protocol"], info["service"], rule["fault"]
    proto = "json" if proto == "rest" else proto  # other REST services: JSON errors
    if kind == "status":
        status, message = rule["status"], "Injected error"
        code = {503: "ServiceUnavailable"}.get(status, SERVER_ERROR[proto] if status >= 500 else "BadRequest")
    else:
        status, code, message = ERRORS[proto].get(kind) or ERRORS[proto]["throttle"]
    if kind == "not_found" and proto == "s3" and "/" not in (info["resource"] or ""):
        code, message = "NoSuchBucket", "The specified bucket does not exist"
    status, code = rule.get("status") or status, rule.get("code") or code
    message = rule.get("message") or message or (
        f"User: arn:aws:iam::000000000000:user/test is not authorized to perform: {service}:"
        f"{info['action']} on resource: {info['resource'] or '*'} (faultproxy rule {rule['id']})")
    rid = str(uuid.uuid4())
    out = [("x-amzn-RequestId", rid)]
    if proto == "json":
        ddb = service.startswith("dynamodb")
        ctype = headers.get("Content-Type", "")
        if not ctype.startswith("application/x-amz-json"):
            ctype = f"application/x-amz-json-{'1.0' if ddb else '1.1'}"
        body = json.dumps({"__type": (DDB_NS if ddb else "") + code, "message": message})
    else:
        xml = f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        if proto == "query":
            ctype, xmlns = "text/xml", f' xmlns="{QUERY_NS[service]}"' if service in QUERY_NS else ""
            fault_of = "Receiver" if status >= 500 else "Sender"
            body = (f"<ErrorResponse{xmlns}><Error><Type>{fault_of}</Type>{xml}</Error>"
                    f"<RequestId>{rid}</RequestId></ErrorResponse>")
        else:
            ctype, out = "application/xml", out + [("x-amz-request-id", rid), ("x-amz-id-2", rid)]
            body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{xml}<RequestId>{rid}</RequestId></Error>'
    return status, out + [("Content-Type", ctype)], body.encode()


# --- the proxy ------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; BaseHTTPRequestHandler answers Expect: 100-continue
    server_version = "faultproxy"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    timeout = 600  # an idle client connection is closed after 10 minutes
    up_conn = None  # this client connection's upstream connection

    def log_message(self, *args):  # no stderr line per request: the JSON log has them
        pass

    def do_any(self):
        try:
            body, has_body = self.read_body()
            if urllib.parse.urlsplit(self.path).path.split("/")[1:2] == ["__faults"]:
                return self.control(body)
            t0 = time.monotonic()
            info = classify(self.command, self.path, self.headers, body)
            rule = self.server.faults.match(info, body)
            if rule:
                (status, headers, payload), reason = fault_response(rule, info, self.headers), None
                extra = {"fault": rule["fault"], "rule": rule["id"]}
            else:
                status, reason, headers, payload, error = self.forward(body, has_body)
                extra = {"error": error} if error else {}
            info.pop("protocol")
            ms = round((time.monotonic() - t0) * 1000, 1)
            self.server.log_call({**info, "status": status, "ms": ms, **extra})
            self.reply(status, headers, payload, reason)
        except (ConnectionError, TimeoutError):  # the client went away
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_any

    def read_body(self):
        """(body, has_body): the Content-Length or chunked request body, read whole."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks), True
        length = self.headers.get("Content-Length")
        return (self.rfile.read(int(length)) if length else b""), length is not None

    def forward(self, body, has_body):
        """(status, reason, headers, body, error) of the upstream's answer."""
        host, port = self.server.upstream
        for attempt in (1, 2):
            if self.up_conn is None:
                self.up_conn = http.client.HTTPConnection(host, port, timeout=self.server.upstream_timeout)
            conn, reused = self.up_conn, self.up_conn.sock is not None
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in HOP:
                        conn.putheader(k, v)
                if "Host" not in self.headers:
                    conn.putheader("Host", f"{host}:{port}")
                if has_body:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body if has_body else None)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.getheaders(), resp.read(), None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # RemoteDisconnected is a ConnectionResetError: the upstream closed an idle connection
                if reused and attempt == 1 and isinstance(e, (ConnectionResetError, BrokenPipeError)):
                    continue
                error = f"upstream {type(e).__name__}: {e}"
                status, doc = 504 if isinstance(e, TimeoutError) else 502, {"message": f"faultproxy: {error}"}
                return status, None, [("Content-Type", "application/json")], json.dumps(doc).encode(), error

    def reply(self, status, headers, body, reason=None):
        no_body = self.command == "HEAD" or status in (204, 304) or status < 200
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() not in HOP or (k.lower() == "content-length" and no_body):
                self.send_header(k, v)
        if not no_body:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    def control(self, body):
        parts = urllib.parse.urlsplit(self.path).path.rstrip("/").split("/")[2:]
        rule_id, faults = urllib.parse.unquote(parts[0]) if parts else None, self.server.faults
        status, doc = 405, {"error": f"{self.command} {self.path} is not part of the control API"}
        if self.command == "GET" and rule_id is None:
            status, doc = 200, {"rules": faults.list()}
        elif self.command == "POST" and rule_id is None:
            try:
                status, doc = 200, {"id": faults.add(json.loads(body or b"null"))}
            except ValueError as e:  # json.JSONDecodeError is one
                status, doc = 400, {"error": str(e)}
        elif self.command == "DELETE":
            n = faults.delete(rule_id)
            status, doc = (404, {"error": f"no rule {rule_id!r}"}) if rule_id and not n else (
                200, {"deleted": n})
        self.reply(status, [("Content-Type", "application/json")], json.dumps(doc).encode())

    def finish(self):
        if self.up_conn is not None:
            self.up_conn.close()
        super().finish()


class Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen, upstream, log_path="-", seed=None, upstream_timeout=120.0):
        self.upstream, self.upstream_timeout, self.faults = upstream, upstream_timeout, Faults(seed)
        self.log_lock = threading.Lock()
        self.log_file = sys.stdout if log_path == "-" else open(log_path, "a", encoding="utf-8")
        super().__init__(listen, Handler)

    def server_bind(self):  # HTTPServer.server_bind would look the host name up (getfqdn)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def log_call(self, fields):
        line = json.dumps({"ts": round(time.time(), 3), **fields}, default=str)
        with self.log_lock:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def server_close(self):
        super().server_close()
        if self.log_file is not sys.stdout:
            self.log_file.close()


def loopback(host):
    """localhost or 127.0.0.0/8; no name is resolved."""
    try:
        return host == "localhost" or ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="loopback HOST:PORT to listen on (port 0: any)")
    aws_port = os.environ.get("RULESTREAM_AWS_PORT", "4566")
    p.add_argument("--upstream", default=f"http://127.0.0.1:{aws_port}",
                   help="loopback AWS endpoint (default http://127.0.0.1:$RULESTREAM_AWS_PORT or 4566)")
    p.add_argument("--log", default="-", help="file the JSON call lines are appended to (default stdout)")
    p.add_argument("--seed", type=int, default=None, help="seed of the probability draws")
    p.add_argument("--timeout", type=float, default=120.0, help="upstream socket timeout (s)")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not loopback(host) or not port.isdigit():
        p.error(f"--listen must be a loopback HOST:PORT such as 127.0.0.1:8080, not {args.listen!r}")
    up = urllib.parse.urlsplit(args.upstream)
    try:
        up_port = up.port or 80
    except ValueError:  # not a number
        up_port = None
    if up.scheme != "http" or not loopback(up.hostname or "") or not up_port or up.path not in ("", "/"):
        p.error(f"--upstream must be a loopback http://HOST:PORT such as http://127.0.0.1:4566, "
                f"not {args.upstream!r}")
    args.listen = ("127.0.0.1" if host == "localhost" else host, int(port))
    args.upstream = ("127.0.0.1" if up.hostname == "localhost" else up.hostname, up_port)
    return args


def main(argv=None):
    args = parse_args(argv)
    server = Proxy(args.listen, args.upstream, args.log, args.seed, args.timeout)

    def stop(signum, _frame):
        log("signal", signal=signal.Signals(signum).name)
        STOP.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    port = server.server_address[1]
    log("proxy_started", port=port, listen=f"{args.listen[0]}:{port}",
        upstream="http://%s:%d" % args.upstream, log=args.log, seed=args.seed)
    while not STOP.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    log("proxy_stopped", port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
