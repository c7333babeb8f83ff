"""The pytest plugin as a user meets it: a user's test file run by pytester in its own process,
using `enclavekit_endpoint` (on the port --enclavekit-port names) and `enclavekit_deploy`
against a tiny CDK app, the README's construct example as printed (no CfnOutput: its stack is
found from the cloud assembly) and that example with a construct error.

Budget: ~60 s on 2 cores (one endpoint, one bootstrap, five cdk deploys, one enclave boot);
`Deployment.verify()` is exercised by test_e2e_sample_app.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from e2e_support import write_readme_app, write_tiny_app

from local_backend import pytest_plugin as plugin

pytest_plugins = ["pytester"]

USER_TESTS = """
import json, socket, ssl
from pathlib import Path

import pytest

TINY = Path(r"{tiny}")
README_APP = Path(r"{readme}")
T3 = Path(r"{t3}")
REPORT = Path(r"{report}")


def _report(**kw):
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {{}}
    data.update(kw)
    REPORT.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def tiny(enclavekit_deploy):
    return enclavekit_deploy(TINY, context={{"greeting": "hello"}})


def test_outputs_and_clients(tiny, enclavekit_endpoint):
    ep = enclavekit_endpoint
    _report(state_dir=str(ep.state_dir), port=ep.port, pid=ep.pid)
    assert ep.url == f"http://localhost:{{ep.port}}"
    assert ep.env["AWS_ENDPOINT_URL"] == ep.url
    assert ep.env["AWS_ACCESS_KEY_ID"] == "testing"
    assert tiny.stacks == ("TinyStack",)
    out = tiny.outputs["TinyStack"]
    assert out["GreetingOut"] == "hello"
    assert ep.client("ssm").get_parameter(Name=out["ParamName"])["Parameter"]["Value"] == "hello"
    assert ep.client("s3").head_bucket(Bucket=out["BucketName"])["ResponseMetadata"][
        "HTTPStatusCode"] == 200
    assert tiny.hosts == ()


def test_no_change_then_update(tiny, enclavekit_deploy, enclavekit_endpoint):
    again = enclavekit_deploy(TINY, context={{"greeting": "hello"}})
    assert "TinyStack (no changes)" in again.cdk.output
    changed = enclavekit_deploy(TINY, ["TinyStack"], {{"greeting": "bye"}})
    assert changed.outputs["TinyStack"]["GreetingOut"] == "bye"
    ssm = enclavekit_endpoint.client("ssm")
    assert ssm.get_parameter(Name="/tiny/greeting")["Parameter"]["Value"] == "bye"


def test_unsupported_type_fails(enclavekit_deploy):
    enclavekit_deploy(TINY, stacks=["TinyBadStack"], context={{"bad": True}})


def test_not_an_app(enclavekit_deploy, tmp_path):
    enclavekit_deploy(tmp_path)


def test_construct_error_is_one_line(enclavekit_deploy):
    enclavekit_deploy(T3)


def test_readme_example_https(enclavekit_deploy):
    # the README's PaymentsStack, copied as printed: no CfnOutput at all
    d = enclavekit_deploy(README_APP, secrets={{"api-token": b"plugin-secret"}})
    host = d.host()
    _report(relay_port=host.relay_port, instance_id=host.instance_id)
    assert d.stacks == ("Payments",) and d.outputs == {{"Payments": {{}}}}
    assert host.domain == "pay.example.test" and host.service_port == 443
    report = d.verify()  # the README's plugin pattern
    # the example is set-up C: ACM denies its image the certificate's key, as AWS does
    failed = {{c.name: c.detail for h in report.hosts for c in h.checks if not c.ok}}
    assert set(failed) == {{"https", "key-not-on-parent"}}, report.table()
    assert all("AccessDeniedException" in v for v in failed.values()), report.table()
    with pytest.raises(pytest.fail.Exception, match="TLS to pay.example.test"):
        d.https(host, "/hello?x=1")
"""


def test_nothing_starts_unless_asked(pytester: pytest.Pytester) -> None:
    """The plugin is loaded in every session; a test without its fixtures starts nothing and
    does not even import boto3, moto or the rest of the local backend (only its docstring-only
    package and the plugin itself)."""
    pytester.makepyfile(
        test_plain=textwrap.dedent("""
        import sys

        def test_plain(request):
            assert "enclavekit_endpoint" not in request.fixturenames
            assert "local_backend.pytest_plugin" in sys.modules
            for mod in ("boto3", "moto", "aws_cdk"):
                assert mod not in sys.modules, mod
            backend = sorted(m for m in sys.modules if m.startswith("local_backend."))
            assert backend == ["local_backend.pytest_plugin"], backend
        """)
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures")
    result.stdout.fnmatch_lines(["*enclavekit_endpoint*", "*enclavekit_deploy*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.slow  # a pytest subprocess: endpoint, bootstrap, five cdk deploys, an enclave
def test_user_tests_with_the_fixtures(pytester: pytest.Pytester, tmp_path: Path) -> None:
    tiny = write_tiny_app(tmp_path / "tiny")
    readme = write_readme_app(tmp_path / "readme")
    t3 = write_readme_app(tmp_path / "t3")
    (t3 / "app.py").write_text((t3 / "app.py").read_text().replace("m5a.xlarge", "t3.large"))
    report = tmp_path / "report.json"
    pytester.makepyfile(test_user=USER_TESTS.format(tiny=tiny, readme=readme, t3=t3, report=report))
    port = plugin.free_port()
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rf", "--timeout=400", f"--enclavekit-port={port}"
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=3, failed=3)
    # the construct error: one line with the message and where, no jsii traceback
    result.stdout.fnmatch_lines(
        [
            "*enclavekit: cdk deploy of */t3 failed (exit 1): construct error: instance_type "
            "must be enclave-capable *got 't3.large'* (construct EnclaveHost at app.py:*)"
        ]
    )
    # each failure is one line naming what failed and why, then the tail of cdk's output
    result.stdout.fnmatch_lines(
        [
            "*enclavekit: cdk deploy of */tiny failed (exit 1): *"
            "not supported by the enclavekit local endpoint: [[]AWS::GameLift::Alias[]]*",
            "--- last 40 lines of cdk output ---",
            "*TinyBadStack: creating CloudFormation changeset...*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*enclavekit_deploy: app_dir must be a directory with cdk.json, got '*test_not_an_app0'"]
    )
    assert "pytest_plugin.py" not in out  # no traceback into the plugin, only the reasons
    # after the session: the endpoint, the host, the enclave and every port are gone
    seen = json.loads(report.read_text())
    assert seen["port"] == port  # --enclavekit-port chose it
    state = Path(seen["state_dir"])
    assert plugin.processes_of(state) == []
    assert plugin.listening([p for p in (seen["port"], seen["relay_port"]) if p]) == set()
    assert not (state / "endpoint.json").exists()
    host = json.loads((state / "instances" / seen["instance_id"] / "host.json").read_text())
    assert host["state"] == "stopped"


def test_reason_picks_the_cdk_error_line() -> None:
    out = "\n".join(
        [
            "Stack: creating CloudFormation changeset...",
            "",
            "❌  Stack failed: ValidationError: Template format error: bad thing",
            "",
            "✨  Total time: 5s",
        ]
    )
    assert (
        plugin._reason(out) == "❌  Stack failed: ValidationError: Template format error: bad thing"
    )
    assert plugin._reason("a\nsome Error here\nb") == "some Error here"
    assert plugin._reason("") == "no output"


def test_endpoint_port_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$ENCLAVEKIT_PORT names the port; a bad one is a one-line usage error, nothing starts."""
    pytester.makepyfile(
        test_port=textwrap.dedent("""
        from local_backend.pytest_plugin import endpoint_port

        def test_port(request):
            assert endpoint_port(request.config) == 4711
        """)
    )
    monkeypatch.setenv("ENCLAVEKIT_PORT", "4711")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    monkeypatch.setenv("ENCLAVEKIT_PORT", "port")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ENCLAVEKIT_PORT: expected a TCP port 1..65535, found 'port'*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--enclavekit-port=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--enclavekit-port: expected a TCP port 1..65535, found '0'*"])
