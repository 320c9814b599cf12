"""An example `http` master rule in Python (SPEC section 2): any language can decide a branch of a
flow by answering `{"outcome", "set"}` to `{input, ctx, client, params, execution}`.

The rule: an order is "risky" when its `input.country` is one of `params.high_risk_countries`
or its `input.amount` is over `params.max_amount` (default 10,000); otherwise "safe". It sets
`risk` to a score in 0..1.

    python3 functions/rules/risk/app.py --listen 127.0.0.1:9181      # POST /risk

Standard library only. Loopback only unless --public is given (on AWS it would sit behind a
Lambda function URL or an API; the catalog's `url` names it, and the orchestrator's egress
allowlist must list its host).
"""

import argparse
import ipaddress
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 256 * 1024


def decide(req):
    """The rule's answer to one request."""
    inp = req.get("input") or {}
    params = req.get("params") or {}
    country = inp.get("country")
    amount = inp.get("amount") or 0
    high_risk = params.get("high_risk_countries") or []
    max_amount = params.get("max_amount") or 10_000
    risk = 0.0
    if country in high_risk:
        risk += 0.6
    if isinstance(amount, (int, float)) and max_amount > 0:
        risk += min(0.4, 0.4 * amount / max_amount)
    outcome = "risky" if country in high_risk or (isinstance(amount, (int, float)) and amount > max_amount) else "safe"
    return {"outcome": outcome, "set": {"risk": round(risk, 4)}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] != "/risk":
            return self._answer(404, {"error": "POST /risk"})
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            return self._answer(413, {"error": "body too large"})
        try:
            req = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            return self._answer(400, {"error": "the body must be a JSON object"})
        return self._answer(200, decide(req))

    def log_message(self, fmt, *args):
        # One JSON line per request, never the body (it carries client data).
        print(json.dumps({"event": "request", "path": self.path, "status": args[1] if len(args) > 1 else None}),
              flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:9181", help="HOST:PORT")
    p.add_argument("--public", action="store_true", help="allow a non-loopback listen address")
    a = p.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    if not a.public and not ipaddress.ip_address(host).is_loopback:
        p.error("--listen must be a loopback address (or pass --public)")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"event": "listening", "listen": f"{host}:{srv.server_address[1]}"}), flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
