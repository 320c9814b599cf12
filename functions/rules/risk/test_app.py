"""Tests of the example Python rule: its decision, and its HTTP answers on a loopback port."""

import json
import threading
import unittest
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path
import importlib.util

spec = importlib.util.spec_from_file_location("risk_app", Path(__file__).with_name("app.py"))
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)


class Decide(unittest.TestCase):
    def test_country_and_amount(self):
        params = {"high_risk_countries": ["XX"], "max_amount": 1000}
        self.assertEqual(app.decide({"input": {"country": "XX", "amount": 10}, "params": params})["outcome"], "risky")
        self.assertEqual(app.decide({"input": {"country": "FR", "amount": 5000}, "params": params})["outcome"], "risky")
        safe = app.decide({"input": {"country": "FR", "amount": 500}, "params": params})
        self.assertEqual(safe, {"outcome": "safe", "set": {"risk": 0.2}})
        self.assertEqual(app.decide({})["outcome"], "safe")


class Http(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = ThreadingHTTPServer(("127.0.0.1", 0), app.Handler)
        cls.port = cls.srv.server_address[1]
        threading.Thread(target=cls.srv.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.srv.shutdown()
        cls.srv.server_close()

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def test_answers(self):
        s, v = self.post("/risk", json.dumps({"input": {"country": "XX"}, "params": {"high_risk_countries": ["XX"]}}).encode())
        self.assertEqual((s, v["outcome"]), (200, "risky"))
        self.assertEqual(self.post("/risk", b"[1]")[0], 400)
        self.assertEqual(self.post("/risk", b"{bad")[0], 400)
        self.assertEqual(self.post("/other", b"{}")[0], 404)

    def test_refuses_a_public_listen_address(self):
        with self.assertRaises(SystemExit):
            app.main(["--listen", "0.0.0.0:0"])


if __name__ == "__main__":
    unittest.main()
