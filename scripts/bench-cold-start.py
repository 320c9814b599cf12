#!/usr/bin/env python3
"""Cold start and size of the function bootstraps (BENCHMARKS.md, "Cold start and size").

    python3 scripts/bench-cold-start.py --bin-dir DIR [--runs 20] [--env-file localstack/.state/lambda.env]

For each function binary in DIR (orchestrator, sweeper, sync-api, release-bridge): its size, its
size deflated (zlib level 6, as in the zip of a deployment package), and its init duration as Lambda counts it: from the process start to its first poll of the Runtime
API (`GET /2018-06-01/runtime/invocation/next`), served here by a stub Runtime API on 127.0.0.1.
The process is killed at that poll (no invocation is sent). Median and p90 over --runs starts.
The functions read their configuration at init: the env file of the local stack supplies it
(`make demo` writes it), so their SDK clients and Redis settings are built as in the e2e suite.
Keep the local stack running while measuring: the sweeper asks SQS for its on-failure queue at
init, and with the stack down that call's retries are what gets measured.
"""
import argparse
import http.server
import statistics
import subprocess
import threading
import time
import zlib
from pathlib import Path

from function_env import env_from  # scripts/function_env.py

FUNCTIONS = ["orchestrator", "sweeper", "sync-api", "release-bridge"]


class Stub(http.server.BaseHTTPRequestHandler):
    polled = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.endswith("/runtime/invocation/next"):
            Stub.polled.set()
            # Never answer: the function waits here, as it would for its first event.
            time.sleep(5)

    def log_message(self, *args):
        pass


def init_ms(binary, env, port):
    Stub.polled.clear()
    env = dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}",
               AWS_LAMBDA_FUNCTION_NAME=binary.name, AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
               AWS_LAMBDA_FUNCTION_VERSION="$LATEST", AWS_LAMBDA_LOG_FORMAT="JSON")
    t0 = time.perf_counter()
    p = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not Stub.polled.wait(10):
            raise SystemExit(f"{binary.name} never polled the Runtime API")
        return (time.perf_counter() - t0) * 1000
    finally:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--env-file", default="localstack/.state/lambda.env")
    a = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    env = env_from(a.env_file)
    print("| function | bootstrap size | deflated | init p50 | init p90 |")
    print("|---|---|---|---|---|")
    for name in FUNCTIONS:
        b = Path(a.bin_dir) / name
        if not b.is_file():
            b = Path(a.bin_dir) / name / "bootstrap"
        xs = sorted(init_ms(b, env, port) for _ in range(a.runs))
        p90 = xs[min(len(xs) - 1, int(0.9 * (len(xs) - 1) + 0.5))]
        deflated = len(zlib.compress(b.read_bytes(), 6))
        print(f"| {name} | {b.stat().st_size / 1e6:.1f} MB | {deflated / 1e6:.1f} MB "
              f"| {statistics.median(xs):.1f} ms | {p90:.1f} ms |")
    server.shutdown()


if __name__ == "__main__":
    main()
