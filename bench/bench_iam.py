"""IAM enforcement's cost: the same work against an endpoint with `--iam on` and one with
`--iam off`, in the same run on the same machine (the figure is the ratio on/off).

Requests: as a role session whose inline policy grants exactly what is called (so every call
is evaluated and allowed), p50 latency of S3 GetObject, SSM GetParameter, EC2
DescribeInstances, STS AssumeRole (trust policy + identity policy) and IAM GetRole.
Deploy: `cdk bootstrap`, then three `cdk deploy`s of a trivial CDK app (one SSM parameter;
bench_up's baseline app; a create, then two updates) with the real cdk CLI; with enforcement
on, the CLI assumes the bootstrap roles, every call it and they make is authorized and
CloudFormation builds the stack as the cfn-exec role.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench_up import free_port, timed_cdk, write_trivial_app
from enclavekit.localenv import LOCAL_ACCOUNT, LOCAL_REGION
from local_backend import server

N = 150  # requests per call kind and endpoint, alternating call by call
DEPLOY_ROUNDS = 3  # deploys per mode, alternating (create, then updates)
VALUE_VAR = "BENCH_BASELINE_VALUE"  # the trivial app's parameter value
ACCOUNT_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": LOCAL_ACCOUNT}, "Action": "sts:AssumeRole"}
    ],
}


def _client(endpoint: str, service: str, creds: dict[str, str] | None = None) -> Any:
    import boto3

    from enclavekit.localenv import LOCAL_ACCESS_KEY_ID, LOCAL_SECRET_ACCESS_KEY

    c = creds or {
        "aws_access_key_id": LOCAL_ACCESS_KEY_ID,
        "aws_secret_access_key": LOCAL_SECRET_ACCESS_KEY,
    }
    return boto3.client(service, endpoint_url=endpoint, region_name=LOCAL_REGION, **c)


def setup_calls(endpoint: str) -> dict[str, Callable[[], Any]]:
    """A bucket, a parameter and a role whose session may call exactly what is measured."""
    _client(endpoint, "s3").create_bucket(Bucket="bench-iam")
    _client(endpoint, "s3").put_object(Bucket="bench-iam", Key="k", Body=b"x" * 1024)
    _client(endpoint, "ssm").put_parameter(Name="/bench/p", Value="v", Type="String")
    iam = _client(endpoint, "iam")
    arn = iam.create_role(RoleName="bench-iam", AssumeRolePolicyDocument=json.dumps(ACCOUNT_TRUST))[
        "Role"
    ]["Arn"]
    statements = [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bench-iam/*"},
        {"Effect": "Allow", "Action": "ssm:GetParameter", "Resource": "*"},
        {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": arn},
        {"Effect": "Allow", "Action": "iam:GetRole", "Resource": arn},
    ]
    iam.put_role_policy(
        RoleName="bench-iam",
        PolicyName="bench",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    c = _client(endpoint, "sts").assume_role(RoleArn=arn, RoleSessionName="bench")["Credentials"]
    creds = {
        "aws_access_key_id": c["AccessKeyId"],
        "aws_secret_access_key": c["SecretAccessKey"],
        "aws_session_token": c["SessionToken"],
    }
    s3, ssm, ec2 = (_client(endpoint, s, creds) for s in ("s3", "ssm", "ec2"))
    sts, role_iam = _client(endpoint, "sts", creds), _client(endpoint, "iam", creds)
    return {
        "s3 GetObject": lambda: s3.get_object(Bucket="bench-iam", Key="k")["Body"].read(),
        "ssm GetParameter": lambda: ssm.get_parameter(Name="/bench/p"),
        "ec2 DescribeInstances": lambda: ec2.describe_instances(),
        "sts AssumeRole": lambda: sts.assume_role(RoleArn=arn, RoleSessionName="again"),
        "iam GetRole": lambda: role_iam.get_role(RoleName="bench-iam"),
    }


def interleaved_p50_ms(calls: dict[str, Callable[[], Any]], n: int = N) -> dict[str, float]:
    """p50 latency (ms) of each mode's call, timed one call at a time in turn, so a burst of
    load from other processes falls on both modes alike."""
    for call in calls.values():
        call()  # warm-up
    lat: dict[str, list[float]] = {m: [] for m in calls}
    for _ in range(n):
        for m, call in calls.items():
            t0 = time.perf_counter()
            call()
            lat[m].append(time.perf_counter() - t0)
    return {m: statistics.median(v) * 1e3 for m, v in lat.items()}


def measure(work: Path, *, n: int = N, deploy: bool = True) -> dict[str, dict[str, float]]:
    """{row: {"on": value, "off": value}} for every request kind (ms) and the deploy (s).

    Both endpoints run at once and are measured call by call in turn (deploys in alternating
    rounds), so load from other processes on the machine falls on both alike."""
    out: dict[str, dict[str, float]] = {}
    modes = ("on", "off")
    infos = {m: server.start(free_port(), work / f"state-{m}", iam=m) for m in modes}
    try:
        calls = {m: setup_calls(infos[m].endpoint) for m in modes}
        for name in calls["on"]:
            out[f"{name} p50 ms"] = interleaved_p50_ms({m: calls[m][name] for m in modes}, n)
        if deploy:
            out.update(_deploys(work, {m: infos[m].endpoint for m in modes}))
    finally:
        for m in modes:
            server.stop(work / f"state-{m}")
    return out


def _deploys(work: Path, endpoints: dict[str, str]) -> dict[str, dict[str, float]]:
    """`cdk bootstrap`, then DEPLOY_ROUNDS deploys per mode in alternating rounds (the first
    creates the stack, each later one updates its parameter): the median of each."""
    target = f"aws://{LOCAL_ACCOUNT}/{LOCAL_REGION}"
    apps = {m: write_trivial_app(work / f"app-{m}") for m in endpoints}
    boot = {m: timed_cdk(["bootstrap", target], work, ep) for m, ep in endpoints.items()}
    samples: dict[str, list[float]] = {m: [] for m in endpoints}
    before = os.environ.get(VALUE_VAR)
    try:
        for i in range(DEPLOY_ROUNDS):
            os.environ[VALUE_VAR] = f"round-{i}"  # the app reads it: each round is a change
            for m, ep in endpoints.items():
                deploy = ["deploy", "--require-approval", "never"]
                samples[m].append(timed_cdk(deploy, apps[m], ep))
    finally:
        if before is None:
            os.environ.pop(VALUE_VAR, None)
        else:
            os.environ[VALUE_VAR] = before
    return {
        "cdk bootstrap s": boot,
        f"cdk deploy s (median of {DEPLOY_ROUNDS})": {
            m: statistics.median(v) for m, v in samples.items()
        },
    }


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = [f"{'':32} {'iam on':>10} {'iam off':>10} {'on/off':>8}"]
    for name, v in rows.items():
        lines.append(f"{name:32} {v['on']:10.2f} {v['off']:10.2f} {v['on'] / v['off']:7.2f}x")
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-iam-") as tmp:
        print(table(measure(Path(tmp))))


if __name__ == "__main__":
    main()
