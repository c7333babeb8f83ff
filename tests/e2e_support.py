"""End-to-end helpers: a private copy of the sample app, and the tiny CDK app of the plugin tests.

The sample app is copied (app.py, cdk.json, enclave_app/) so a test can change its image or
its code without touching the project; its cdk.json runs this interpreter, so the copy works
from any directory.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The line of app.py after which `patch_app` inserts code (inside the stack's __init__).
ANCHOR = (
    '        secret = ek.EnclaveSecret(self, "AppSecret", host=host, key=key, name="app-secret")\n'
)

TINY_APP = textwrap.dedent('''
    """A tiny CDK app: an SSM parameter and an S3 bucket (and, on request, a bad stack)."""
    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3, aws_ssm as ssm

    app = cdk.App()
    env = cdk.Environment(account="123456789012", region="us-east-1")
    stack = cdk.Stack(app, "TinyStack", env=env)
    greeting = app.node.try_get_context("greeting") or "hi"
    param = ssm.StringParameter(stack, "Greeting", parameter_name="/tiny/greeting",
                                string_value=greeting)
    bucket = s3.Bucket(stack, "Bucket", removal_policy=cdk.RemovalPolicy.DESTROY)
    cdk.CfnOutput(stack, "ParamName", value=param.parameter_name)
    cdk.CfnOutput(stack, "BucketName", value=bucket.bucket_name)
    cdk.CfnOutput(stack, "GreetingOut", value=greeting)
    if app.node.try_get_context("bad"):
        bad = cdk.Stack(app, "TinyBadStack", env=env)
        ssm.StringParameter(bad, "Before", string_value="x")
        cdk.CfnResource(bad, "Alias", type="AWS::GameLift::Alias", properties={
            "Name": "tiny", "RoutingStrategy": {"Type": "TERMINAL", "Message": "gone"}})
    app.synth()
''')


def write_tiny_app(dest: Path) -> Path:
    """The tiny app in `dest`; its cdk.json says `python3 app.py` as users write it."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "app.py").write_text(TINY_APP)
    (dest / "cdk.json").write_text(json.dumps({"app": "python3 app.py"}))
    return dest


def copy_sample_app(
    dest: Path, *, stack_name: str | None = None, context: dict[str, object] | None = None
) -> Path:
    """app.py, cdk.json and enclave_app/ of the project in `dest` (caches left out), with
    `stack_name` and `context` merged into the copy's cdk.json context (web_host false unless
    `context` asks for it)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "app.py", dest / "app.py")
    shutil.copytree(
        ROOT / "enclave_app",
        dest / "enclave_app",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    cfg = json.loads((ROOT / "cdk.json").read_text())
    cfg["app"] = f"{sys.executable} app.py"
    # Tests deploy only the host they exercise: the set-up A web host when asked for.
    cfg.setdefault("context", {}).update({"web_host": False, **(context or {})})
    if stack_name:
        cfg["context"]["stack_name"] = stack_name
    (dest / "cdk.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return dest


def patch_app(app_dir: Path, code: str) -> None:
    """Insert `code` into the stack's __init__, after the app secret (imports go inside)."""
    path = app_dir / "app.py"
    text = path.read_text()
    if ANCHOR not in text:
        raise AssertionError(f"{path}: the line to patch after is gone: {ANCHOR.strip()!r}")
    body = textwrap.indent(textwrap.dedent(code).strip() + "\n", " " * 8)
    path.write_text(text.replace(ANCHOR, ANCHOR + body))


def readme_construct_example() -> str:
    """The README's construct example (its first python block after "## A construct
    example"), exactly as printed."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A construct example") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


def write_readme_app(dest: Path) -> Path:
    """The README's construct example as a user sets it up: app.py copied as printed, the
    README's cdk.json (`python3 app.py`) and a copy of enclave_app/ next to it."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "app.py").write_text(readme_construct_example())
    (dest / "cdk.json").write_text(json.dumps({"app": "python3 app.py"}))
    shutil.copytree(
        ROOT / "enclave_app",
        dest / "enclave_app",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return dest


# The sample app with context certificate_in_image=true is set-up C (its image claims the ACM
# certificate), which AWS refuses: ACM releases the certificate's key only to its own enclave
# image. These are the verify checks that fail on it, as they would on AWS.
SETUP_C_DENIED = ("https", "key-not-on-parent")


def assert_setup_c_denied(report: object) -> None:
    """Every verify check passes but the TLS ones, which fail because ACM's key is denied to
    the sample's own image (AccessDeniedException) and the enclave says so."""
    hosts = report.hosts  # type: ignore[attr-defined]
    assert hosts and not report.problems, report.table()  # type: ignore[attr-defined]
    for host in hosts:
        failed = {c.name: c.detail for c in host.checks if not c.ok}
        assert set(failed) == set(SETUP_C_DENIED), report.table()  # type: ignore[attr-defined]
        for detail in failed.values():
            assert "the enclave holds no certificate key (degraded)" in detail, detail
            assert "AccessDeniedException" in detail, detail
