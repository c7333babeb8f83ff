"""Deploying Lambda-backed custom resources on the local runtime, against the same stack
without them.

What runs: one CDK app, synthesized once per variant, deployed with the pinned CLI against a
fresh endpoint on a free loopback port:
  with      a Python Lambda function + N `cdk.CustomResource`s it serves (each one a real
            invocation: subprocess, event, pre-signed response URL, PUT of the answer)
  baseline  the same stack without the custom resources (the function and its role only)
Deploy time is `cdk deploy --app <assembly>` (no synth in the figure); the ratio is
with / baseline (the issue's aim: <= 3x for N = 20).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from local_backend import server
from local_backend.cdk import bootstrap_target, run_cdk

HANDLER = """
import json, urllib.request
def handler(event, context):
    body = json.dumps({"Status": "SUCCESS", "Reason": "ok",
        "PhysicalResourceId": event["LogicalResourceId"], "StackId": event["StackId"],
        "RequestId": event["RequestId"], "LogicalResourceId": event["LogicalResourceId"],
        "Data": {"N": event["ResourceProperties"].get("N", "")}}).encode()
    req = urllib.request.Request(event["ResponseURL"], data=body, method="PUT")
    urllib.request.urlopen(req).read()
"""

APP = f"""
import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_

app = cdk.App()
n = int(app.node.try_get_context("n") or 0)
stack = cdk.Stack(app, "BenchCustomResources")
fn = lambda_.Function(stack, "Handler", runtime=lambda_.Runtime.PYTHON_3_12,
                      handler="index.handler", code=lambda_.Code.from_inline({HANDLER!r}))
for i in range(n):
    cdk.CustomResource(stack, f"Res{{i}}", service_token=fn.function_arn,
                       properties={{"N": str(i)}})
app.synth()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(state: Path, app: Path, *args: str) -> float:
    start = time.perf_counter()
    res = run_cdk(args, state_dir=state, cwd=app, capture=True, timeout=900)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"cdk {' '.join(args)} failed: {(res.stdout + res.stderr)[-2000:]}")
    return elapsed


def measure(count: int = 20) -> dict[str, float]:
    """Deploy seconds of the stack with `count` custom resources and without (same run)."""
    work = Path(tempfile.mkdtemp(prefix="ek-bench-cr-"))
    state = work / "state"
    try:
        app = work / "app"
        app.mkdir()
        (app / "app.py").write_text(APP)
        (app / "cdk.json").write_text(json.dumps({"app": f"{sys.executable} app.py"}))
        server.start(_free_port(), state)
        _run(state, app, "bootstrap", bootstrap_target())
        times: dict[str, float] = {}
        for label, n in (("baseline", 0), ("with", count)):
            out = f"cdk.out.{label}"
            _run(state, app, "synth", "-c", f"n={n}", "--output", out, "--quiet")
            times[label] = _run(state, app, "deploy", "--app", out, "--require-approval", "never")
            _run(state, app, "destroy", "--app", out, "--force")
        return times
    finally:
        server.stop(state)
        shutil.rmtree(work, ignore_errors=True)


def main(count: int = 20) -> None:
    times = measure(count)
    ratio = times["with"] / times["baseline"]
    print(f"custom resources: deploy of a stack with {count} Lambda-backed custom resources")
    print(f"  {'variant':<28}{'deploy s':>10}{'ratio':>8}")
    print(f"  {'baseline (function only)':<28}{times['baseline']:>10.2f}{1.0:>8.2f}")
    print(f"  {f'with {count} custom resources':<28}{times['with']:>10.2f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
