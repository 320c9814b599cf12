#!/usr/bin/env python3
"""The CEL project's own conformance tests (google/cel-spec's simple tests, as published on npm in
`@bufbuild/cel-spec`), run through `rulestream dry-run`: what a flow author gets from a `when`.

Taken: the tests that need no protobuf types, bindings or containers, and whose expected result
is a bool (`value: {boolValue}`, or no matcher, which means `true`) or an evaluation error. Each
becomes a one-rule flow

    {"when": EXPR, "on": {"true": {"complete": "TRUE"}, "false": {"complete": "FALSE"}},
     "on_error": {"complete": "ERROR"}}

dry-run with an empty input: a `true` test passes when the run ends TRUE, a `false` one FALSE, an
error test ERROR (or when the flow does not validate: the error is found before any run). The
package is installed under the cache directory by this script (npm), never committed.

    python3 scripts/cel-conformance.py [--rulestream PATH] [--min-rate 0.95] [--show-failures]

The rate is taken over the standard language and the string extension, which is what a flow's
CEL offers (docs/flows.md). The suites of extensions rulestream does not enable (`math_ext`,
`bindings_ext`, `block_ext`, and `macros2`: two-variable comprehensions) are run and shown too,
outside the rate. Exits 1 when the rate falls under --min-rate: 0.967, just under today's
746 of 771 (96.76%), so one case lost fails the run and no drop goes unnoticed. (747 until an
undeclared function became a validation error, like an unknown variable: cel-spec's
`functions/unbound_is_runtime_error` expects a run-time error instead.)
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "@bufbuild/cel-spec@0.6.1"
# Suites of CEL extensions a flow's CEL does not enable: shown, not counted in the rate.
EXTENSIONS = {"math_ext", "bindings_ext", "block_ext", "macros2"}
PROTO = re.compile(r"google\.protobuf|cel\.expr|\b[A-Z][A-Za-z0-9_]*\s*\{|TestAllTypes|proto[23]")


def install(cache: Path) -> Path:
    """The package's directory, installed with npm when missing."""
    root = cache / "cel-spec"
    pkg = root / "node_modules" / "@bufbuild" / "cel-spec"
    if not (pkg / "package.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", "--silent", PACKAGE],
            check=True,
        )
    return pkg


def load(pkg: Path) -> dict:
    script = "console.log(JSON.stringify(require(process.argv[1]).tests))"
    out = subprocess.run(
        ["node", "-e", script, str(pkg / "dist" / "cjs" / "testdata" / "conformance.js")],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def cases(suite: dict, path: tuple[str, ...] = ()):
    """(suite path, name, expression, expected) for every test this runner takes."""
    for s in suite.get("suites", []):
        yield from cases(s, path + (s["name"],))
    for t in suite.get("tests", []):
        o = t["original"]
        extra = set(o) - {"name", "expr", "description", "value", "evalError", "disableCheck"}
        if extra or PROTO.search(o["expr"]):
            continue
        if "evalError" in o:
            want = "ERROR"
        elif "value" not in o:
            want = "TRUE"
        elif set(o["value"]) == {"boolValue"}:
            want = "TRUE" if o["value"]["boolValue"] else "FALSE"
        else:
            continue
        yield "/".join(path), o.get("name", o["expr"]), o["expr"], want


def run_one(rulestream: str, expr: str) -> tuple[str, str]:
    flow = {
        "client_id": "conformance", "flow_id": "cel", "version": 1,
        "terminal_statuses": ["TRUE", "FALSE", "ERROR"],
        "rules": [{"id": "t", "when": expr,
                   "on": {"true": {"complete": "TRUE"}, "false": {"complete": "FALSE"}},
                   "on_error": {"complete": "ERROR"}}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(flow, f)
        name = f.name
    try:
        p = subprocess.run(
            [rulestream, "dry-run", "--flow", name, "--input", "{}", "--json"],
            capture_output=True, text=True, timeout=30,
        )
    finally:
        os.unlink(name)
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError:
        # Not a run: the flow did not validate (the expression does not compile, or breaks a limit).
        return "INVALID", (p.stderr or p.stdout).strip().splitlines()[-1:][0] if (p.stderr or p.stdout).strip() else ""
    status = doc.get("status", "")
    if status == "FAILED" and "errors" in doc:
        # The flow did not validate (the expression does not compile, or breaks a limit): the
        # error is found before any run.
        return "INVALID", json.dumps(doc["errors"])
    if status == "TRUE" or status == "FALSE":
        return status, ""
    if status == "ERROR":
        explain = (doc.get("steps") or [{}])[0].get("explain", {})
        return "ERROR", explain.get("message", "")
    return status or "INVALID", json.dumps(doc.get("errors") or doc.get("reason") or "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_cli = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/rulestream/target")) / "debug" / "rulestream"
    ap.add_argument("--rulestream", default=str(default_cli))
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "rulestream"))
    ap.add_argument("--min-rate", type=float, default=0.967)
    ap.add_argument("--show-failures", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()

    tests = list(cases(load(install(Path(a.cache)))))
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda c: run_one(a.rulestream, c[2]), tests))

    by_suite: dict[str, list[int]] = {}
    failures = []
    for (suite, name, expr, want), (got, detail) in zip(tests, results):
        ok = got == want or (want == "ERROR" and got == "INVALID")
        top = suite.split("/")[0]
        tally = by_suite.setdefault(top, [0, 0])
        tally[0] += ok
        tally[1] += 1
        if not ok:
            failures.append((suite, name, expr, want, got, detail))
    counted = {k: v for k, v in by_suite.items() if k not in EXTENSIONS}
    passed = sum(p for p, _ in counted.values())
    total = sum(n for _, n in counted.values())
    for suite, (p, n) in sorted(by_suite.items()):
        note = "  (an extension flows do not enable: not in the rate)" if suite in EXTENSIONS else ""
        print(f"  {suite:<24} {p:>4} / {n:<4}{note}")
    rate = passed / total if total else 0.0
    print(f"cel-spec conformance through dry-run: {passed} of {total} pass ({rate:.1%}) in the "
          f"standard language and string extension; with the other extensions' suites "
          f"{sum(p for p, _ in by_suite.values())} of {sum(n for _, n in by_suite.values())}")
    if a.show_failures:
        for suite, name, expr, want, got, detail in failures:
            print(f"FAIL {suite}/{name}: `{expr}` wanted {want}, got {got} {detail[:160]}")
    if rate < a.min_rate:
        print(f"cel-conformance: the pass rate {rate:.1%} is under {a.min_rate:.1%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
