"""Ordinary CDK apps against the local endpoint, with the real cdk CLI.

- `cdk init app --language=python` (files as generated, plus an ec2.Vpc; default feature
  flags, so Custom::VpcRestrictDefaultSG runs its Node.js handler) deploys, updates, destroys.
- A corpus (tests/fixtures/cdk_apps/corpus): a strong export + Fn::ImportValue and a weak
  Fn::GetStackOutput, a generated secret, an NLB TCP listener, a log group, AwsCustomResource,
  autoDeleteObjects, LogRetention, cr.Provider with isComplete, DnsValidatedCertificate, a
  Python handler of ours, a private CA (AWS::ACMPCA::*) issuing an ACM certificate, and on
  update a stack that finds the hosted zone with HostedZone.from_lookup (lookup role, Route 53);
  AWS's refusal to delete an imported export; an update; a handler failure that fails (and
  rolls back) the update with the handler's reason; destroy. The endpoint log has no server error.
  Between the first deploy and the update the endpoint is stopped and started again: the rest
  runs on its restored state (local_backend.persist).
- The Lambda runtime through the Lambda API (payload, handler error, timeout).
- `enclavekit cdk`: the egress guard refuses an AWS hostname at once, naming it; an app's own
  CLI is bypassed; only what could reach an account is stripped from the environment.

One endpoint for the module; the cdk deploys are few and each covers much.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclavekit.localenv import local_client, strip_aws_env
from enclavekit.pytest_plugin import free_port
from local_backend import server
from local_backend.cdk import bootstrap_target, cdk_env, run_cdk
from local_backend.egress import egress_guard, is_loopback

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "cdk_apps"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.EndpointInfo]:
    state = tmp_path_factory.mktemp("state")
    info = server.start(free_port(), state)
    try:
        yield info
    finally:
        server.stop(state)


def _client(endpoint: server.EndpointInfo, service: str) -> Any:
    return local_client(service, endpoint.endpoint)


def _copy_app(name: str, dest: Path) -> Path:
    app = dest / name
    shutil.copytree(FIXTURES / name, app, ignore=shutil.ignore_patterns("cdk.out", "__pycache__"))
    return app


def _cdk(endpoint: server.EndpointInfo, app: Path, *args: str, ok: bool = True) -> str:
    res = run_cdk(args, state_dir=Path(endpoint.state_dir), cwd=app, capture=True, timeout=600)
    out = res.stdout + res.stderr
    assert (res.returncode == 0) is ok, out[-4000:]
    assert res.refused == (), f"the egress guard refused {res.refused}"
    return out


def _server_errors(endpoint: server.EndpointInfo) -> list[str]:
    log = (Path(endpoint.state_dir) / server.LOG_FILE).read_text(errors="replace")
    return [
        ln
        for ln in log.splitlines()
        if '" 500 ' in ln or "InternalFailure" in ln or "Traceback" in ln
    ]


# ------------------------------------------------------------------ the real cdk CLI


@pytest.mark.slow
def test_init_app_and_corpus_deploy_update_destroy(
    endpoint: server.EndpointInfo, tmp_path: Path
) -> None:
    cfn, ec2 = _client(endpoint, "cloudformation"), _client(endpoint, "ec2")
    init = _copy_app("init_python", tmp_path)
    assert "@aws-cdk/aws-ec2:restrictDefaultSecurityGroup" in (init / "cdk.json").read_text()
    _cdk(endpoint, init, "bootstrap", bootstrap_target())

    # cdk init app + ec2.Vpc: the VpcRestrictDefaultSG handler (Node.js) empties the default SG.
    _cdk(endpoint, init, "deploy", "--require-approval", "never")
    res = cfn.describe_stack_resources(StackName="InitPythonStack")["StackResources"]
    types = {r["ResourceType"] for r in res}
    assert "Custom::VpcRestrictDefaultSG" in types
    vpc_id = next(r["PhysicalResourceId"] for r in res if r["ResourceType"] == "AWS::EC2::VPC")
    default_sg = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "group-name", "Values": ["default"]},
        ]
    )["SecurityGroups"][0]
    assert default_sg["IpPermissions"] == [] and default_sg["IpPermissionsEgress"] == []
    subnet = next(r for r in res if r["ResourceType"] == "AWS::EC2::Subnet")["PhysicalResourceId"]

    # update: a tag on every resource is an in-place update (the subnet keeps its id)
    _cdk(endpoint, init, "deploy", "--require-approval", "never", "-c", "owner=alice")
    tags = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["Tags"]
    assert {"Key": "owner", "Value": "alice"} in tags
    _cdk(endpoint, init, "destroy", "--force", "--app", "cdk.out")  # no second synth
    assert not [s for s in cfn.describe_stacks()["Stacks"] if s["StackName"] == "InitPythonStack"]

    corpus = _copy_app("corpus", tmp_path)
    _check_corpus(endpoint, corpus)
    assert _server_errors(endpoint) == []


def _outputs(cfn: Any, stack: str) -> dict[str, str]:
    desc = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in desc.get("Outputs", [])}


def _check_corpus(endpoint: server.EndpointInfo, app: Path) -> None:
    cfn, ssm = _client(endpoint, "cloudformation"), _client(endpoint, "ssm")
    _cdk(endpoint, app, "deploy", "--all", "--require-approval", "never")
    producer, consumer = _outputs(cfn, "Producer"), _outputs(cfn, "Consumer")

    # strong (export + Fn::ImportValue, also inside a custom resource) and weak references
    role_arn = producer["ExportCorpusSharedRoleArn"]
    assert consumer["ImportedRoleArn"] == role_arn
    assert cfn.list_imports(ExportName="Corpus-SharedRoleArn")["Imports"] == ["Consumer"]
    bucket = next(v for k, v in producer.items() if k.startswith("PublishOutputRefSharedBucket"))
    assert consumer["WeakBucket"] == bucket

    # the generated secret: the JSON template with a 24-character alphanumeric password
    value = json.loads(
        _client(endpoint, "secretsmanager").get_secret_value(SecretId=consumer["SecretArn"])[
            "SecretString"
        ]
    )
    assert value["username"] == "app" and len(value["password"]) == 24
    assert value["password"].isalnum()

    # the NLB and its TCP listener
    elb = _client(endpoint, "elbv2")
    lb = elb.describe_load_balancers(LoadBalancerArns=[consumer["NlbArn"]])["LoadBalancers"][0]
    assert lb["Type"] == "network"
    listeners = elb.describe_listeners(LoadBalancerArn=consumer["NlbArn"])["Listeners"]
    assert [(x["Protocol"], x["Port"]) for x in listeners] == [("TCP", 443)]

    # log group; LogRetention's handler set the function's group to 3 days
    logs = _client(endpoint, "logs")
    groups = {g["logGroupName"]: g for g in logs.describe_log_groups()["logGroups"]}
    assert groups[consumer["LogGroupName"]]["retentionInDays"] == 7
    retained = [g for n, g in groups.items() if n.startswith("/aws/lambda/Consumer-Handler")]
    assert retained and retained[0].get("retentionInDays") == 3

    # AwsCustomResource's SDK call and our own Python handler both ran
    assert ssm.get_parameter(Name="/corpus/sdk-1")["Parameter"]["Value"] == "from-sdk-1"
    assert ssm.get_parameter(Name="/corpus/own")["Parameter"]["Value"] == "own-1"
    assert consumer["OwnEcho"] == "own-1"
    assert consumer["WaitedPolls"] == "3"  # cr.Provider's waiter polled isComplete 3 times
    dns_cert = _client(endpoint, "acm").describe_certificate(CertificateArn=consumer["DnsCertArn"])
    assert dns_cert["Certificate"]["Status"] == "ISSUED"
    _client(endpoint, "s3").put_object(Bucket=bucket, Key="left-behind.txt", Body=b"x")

    # AWS's refusal to delete a stack whose export is imported
    out = _cdk(
        endpoint, app, "destroy", "Producer", "--exclusively", "--force", "--app", "cdk.out",
        ok=False,
    )  # fmt: skip
    assert "Export Corpus-SharedRoleArn cannot be deleted as it is in use by Consumer" in out
    assert cfn.describe_stacks(StackName="Producer")["Stacks"][0]["StackStatus"] == (
        "CREATE_COMPLETE"
    )

    # the private CA's ACM certificate, signed by the CA's own key
    check_private_certificate(endpoint, producer["PrivateCaArn"], producer["PrivateCertArn"])

    # `local stop` + `local start`: everything below runs on the restored state (stacks with
    # their exports and imports, Lambda functions, the waiter state machine, the bucket)
    state_dir = Path(endpoint.state_dir)
    server.stop(state_dir)
    assert server.start(endpoint.port, state_dir).endpoint == endpoint.endpoint
    assert "state restored: " in (state_dir / server.LOG_FILE).read_text()
    assert _outputs(cfn, "Consumer") == consumer and _outputs(cfn, "Producer") == producer

    # update: the custom resources get Update (AwsCustomResource's new physical id: the old
    # parameter gets its Delete); `cdk synth` looks the hosted zone up (the lookup role, Route
    # 53 on the local endpoint) for the new stack Lookup, which writes a record into it
    _cdk(
        endpoint, app, "deploy", "--all", "--require-approval", "never",
        "-c", "rev=2", "-c", "lookup=1",
    )  # fmt: skip
    zone_id = _outputs(cfn, "Consumer")["ZoneId"]
    assert _outputs(cfn, "Lookup")["ZoneId"] == zone_id
    context = json.loads((app / "cdk.context.json").read_text())
    assert any(k.startswith("hosted-zone:") for k in context), context
    log = (Path(endpoint.state_dir) / server.LOG_FILE).read_text()
    assert "assumes arn:aws:iam::123456789012:role/cdk-hnb659fds-lookup-role-" in log
    records = _client(endpoint, "route53").list_resource_record_sets(HostedZoneId=zone_id)
    txt = [r for r in records["ResourceRecordSets"] if r["Type"] == "TXT"]
    assert [r["Name"] for r in txt] == ["lookup.corpus.example.test."]
    _cdk(endpoint, app, "destroy", "Lookup", "--force", "-c", "rev=2", "-c", "lookup=1")
    assert _outputs(cfn, "Consumer")["OwnEcho"] == "own-2"
    assert ssm.get_parameter(Name="/corpus/sdk-2")["Parameter"]["Value"] == "from-sdk-2"
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name="/corpus/sdk-1")

    # a handler failure fails the update with the handler's reason; the stack rolls back
    out = _cdk(
        endpoint, app, "deploy", "Consumer", "--require-approval", "never",
        "-c", "rev=2", "-c", "fail=1", ok=False,
    )  # fmt: skip
    assert "the handler refused: Fail is set" in out
    stack = cfn.describe_stacks(StackName="Consumer")["Stacks"][0]
    assert stack["StackStatus"] == "UPDATE_ROLLBACK_COMPLETE"
    assert "FailingResource" not in {
        r["LogicalResourceId"]
        for r in cfn.describe_stack_resources(StackName="Consumer")["StackResources"]
    }

    # the handler's output is in the local CloudWatch Logs
    handler_group = f"/aws/lambda/{retained[0]['logGroupName'].rsplit('/', 1)[1]}"
    deadline = time.monotonic() + 30
    messages: list[str] = []
    while time.monotonic() < deadline and not any("START RequestId" in m for m in messages):
        time.sleep(1)
        events = logs.filter_log_events(logGroupName=handler_group).get("events", [])
        messages = [e["message"] for e in events]
    assert any("the handler refused" not in m and "START RequestId" in m for m in messages)

    # destroy: autoDeleteObjects empties the bucket, the imports go first
    _cdk(endpoint, app, "destroy", "--all", "--force", "--app", "cdk.out")
    names = {s["StackName"] for s in cfn.describe_stacks()["Stacks"]}
    assert not names & {"Producer", "Consumer"}
    assert bucket not in {b["Name"] for b in _client(endpoint, "s3").list_buckets()["Buckets"]}
    assert cfn.list_exports()["Exports"] == [
        e for e in cfn.list_exports()["Exports"] if e["Name"].startswith("CdkBootstrap")
    ]


# ------------------------------------------------------------------ AWS Private CA

PRIVATE_CA_TEMPLATE = {
    "Resources": {
        "Ca": {
            "Type": "AWS::ACMPCA::CertificateAuthority",
            "Properties": {
                "Type": "ROOT",
                "KeyAlgorithm": "RSA_2048",
                "SigningAlgorithm": "SHA256WITHRSA",
                "Subject": {"CommonName": "template private root"},
            },
        },
        "CaCert": {
            "Type": "AWS::ACMPCA::Certificate",
            "Properties": {
                "CertificateAuthorityArn": {"Fn::GetAtt": ["Ca", "Arn"]},
                "CertificateSigningRequest": {"Fn::GetAtt": ["Ca", "CertificateSigningRequest"]},
                "SigningAlgorithm": "SHA256WITHRSA",
                "TemplateArn": "arn:aws:acm-pca:::template/RootCACertificate/V1",
                "Validity": {"Type": "YEARS", "Value": 10},
            },
        },
        "Activation": {
            "Type": "AWS::ACMPCA::CertificateAuthorityActivation",
            "Properties": {
                "CertificateAuthorityArn": {"Fn::GetAtt": ["Ca", "Arn"]},
                "Certificate": {"Fn::GetAtt": ["CaCert", "Certificate"]},
                "Status": "ACTIVE",
            },
        },
        "Leaf": {
            "Type": "AWS::CertificateManager::Certificate",
            "DependsOn": "Activation",
            "Properties": {
                "DomainName": "leaf.private.example.test",
                "CertificateAuthorityArn": {"Fn::GetAtt": ["Ca", "Arn"]},
            },
        },
    },
    "Outputs": {"CaArn": {"Value": {"Ref": "Ca"}}, "LeafArn": {"Value": {"Ref": "Leaf"}}},
}


def check_private_certificate(endpoint: server.EndpointInfo, ca_arn: str, leaf_arn: str) -> None:
    """`leaf_arn` is an ISSUED PRIVATE ACM certificate that `ca_arn`'s own key signed, with the
    CA's certificate as its chain; the CA is ACTIVE through the acm-pca API."""
    from cryptography import x509

    pca, acm = _client(endpoint, "acm-pca"), _client(endpoint, "acm")
    ca = pca.describe_certificate_authority(CertificateAuthorityArn=ca_arn)["CertificateAuthority"]
    assert ca["Status"] == "ACTIVE" and ca["Type"] == "ROOT"
    ca_pem = pca.get_certificate_authority_certificate(CertificateAuthorityArn=ca_arn)[
        "Certificate"
    ]
    desc = acm.describe_certificate(CertificateArn=leaf_arn)["Certificate"]
    assert (desc["Type"], desc["Status"]) == ("PRIVATE", "ISSUED")
    assert desc["CertificateAuthorityArn"] == ca_arn
    got = acm.get_certificate(CertificateArn=leaf_arn)
    leaf = x509.load_pem_x509_certificate(got["Certificate"].encode())
    root = x509.load_pem_x509_certificate(ca_pem.encode())
    assert x509.load_pem_x509_certificate(got["CertificateChain"].encode()) == root
    leaf.verify_directly_issued_by(root)  # the CA's key signed it (raises otherwise)
    root.verify_directly_issued_by(root)  # a self-signed root, from the RootCACertificate template


def test_private_ca_template_and_request_certificate(endpoint: server.EndpointInfo) -> None:
    """A private CA, its root certificate and activation, and an ACM certificate it issues,
    from a template; RequestCertificate to a CA that is not ACTIVE gives AWS's FAILED
    certificate with PCA_INVALID_STATE."""
    cfn = _client(endpoint, "cloudformation")
    cfn.create_stack(StackName="PrivateCaTemplate", TemplateBody=json.dumps(PRIVATE_CA_TEMPLATE))
    stack = cfn.describe_stacks(StackName="PrivateCaTemplate")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    check_private_certificate(endpoint, outputs["CaArn"], outputs["LeafArn"])

    pca, acm = _client(endpoint, "acm-pca"), _client(endpoint, "acm")
    pending = pca.create_certificate_authority(
        CertificateAuthorityConfiguration={
            "KeyAlgorithm": "RSA_2048",
            "SigningAlgorithm": "SHA256WITHRSA",
            "Subject": {"CommonName": "never activated"},
        },
        CertificateAuthorityType="ROOT",
    )["CertificateAuthorityArn"]
    arn = acm.request_certificate(
        DomainName="x.private.example.test", CertificateAuthorityArn=pending
    )["CertificateArn"]
    desc = acm.describe_certificate(CertificateArn=arn)["Certificate"]
    assert (desc["Status"], desc.get("FailureReason")) == ("FAILED", "PCA_INVALID_STATE")
    arn = acm.request_certificate(
        DomainName="y.private.example.test", CertificateAuthorityArn=outputs["CaArn"]
    )["CertificateArn"]
    check_private_certificate(endpoint, outputs["CaArn"], arn)
    cfn.delete_stack(StackName="PrivateCaTemplate")
    ca = pca.describe_certificate_authority(CertificateAuthorityArn=outputs["CaArn"])
    assert ca["CertificateAuthority"]["Status"] == "DELETED"


# ------------------------------------------------------------------ the Lambda runtime


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in files.items():
            zf.writestr(name, body)
    return buf.getvalue()


@pytest.mark.slow
def test_lambda_runtime_contract(endpoint: server.EndpointInfo) -> None:
    iam, lam = _client(endpoint, "iam"), _client(endpoint, "lambda")
    role = iam.create_role(
        RoleName="runtime-test",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    py = textwrap.dedent("""
        import os
        def handler(event, context):
            if event.get("boom"):
                raise ValueError("boom requested")
            if event.get("egress"):
                import urllib.request
                try:
                    urllib.request.urlopen("https://sts.amazonaws.com/", timeout=30)
                    return {"reached": True}
                except Exception as exc:
                    return {"reached": False, "error": str(exc)}
            if event.get("sleep"):
                import time; time.sleep(event["sleep"])
            return {"echo": event, "fn": context.function_name,
                    "left": context.get_remaining_time_in_millis() > 0,
                    "endpoint": os.environ["AWS_ENDPOINT_URL"]}
    """)
    node = (
        "exports.handler = async (event, context) => "
        "({ n: event.n * 2, id: context.awsRequestId });"
    )
    lam.create_function(
        FunctionName="py-fn", Runtime="python3.12", Role=role, Handler="app.handler",
        Code={"ZipFile": _zip({"app.py": py})}, Timeout=8,
    )  # fmt: skip
    lam.create_function(
        FunctionName="node-fn", Runtime="nodejs22.x", Role=role, Handler="index.handler",
        Code={"ZipFile": _zip({"index.js": node})}, Timeout=5,
    )  # fmt: skip

    def call(name: str, event: dict) -> tuple[dict, str | None]:
        r = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
        return json.loads(r["Payload"].read()), r.get("FunctionError")

    payload, err = call("py-fn", {"a": 1})
    assert err is None and payload["echo"] == {"a": 1} and payload["fn"] == "py-fn"
    assert payload["left"] is True and payload["endpoint"] == endpoint.endpoint
    payload, err = call("node-fn", {"n": 21})
    assert err is None and payload["n"] == 42 and payload["id"]
    payload, err = call("py-fn", {"boom": True})
    assert err and payload["errorType"] == "ValueError"
    assert payload["errorMessage"] == "boom requested"
    payload, err = call("py-fn", {"egress": True})  # behind the endpoint's egress guard
    assert err is None and payload["reached"] is False and "403" in payload["error"], payload
    log = (Path(endpoint.state_dir) / server.LOG_FILE).read_text()
    assert "refused a Lambda handler's connection to sts.amazonaws.com:443" in log
    payload, err = call("py-fn", {"sleep": 30})
    assert err and "Task timed out after 8.00 seconds" in payload["errorMessage"]


# ------------------------------------------------------------------ `enclavekit cdk` safety

EGRESS_APP = textwrap.dedent("""
    import sys, urllib.request
    try:
        urllib.request.urlopen("https://sts.us-east-1.amazonaws.com/", timeout=60)
        print("app: REACHED sts.us-east-1.amazonaws.com", file=sys.stderr)
    except Exception as exc:
        print(f"app: cannot reach sts.us-east-1.amazonaws.com: {exc}", file=sys.stderr)
    sys.exit(3)
""")


@pytest.mark.slow
def test_enclavekit_cdk_egress_guard(endpoint: server.EndpointInfo, tmp_path: Path) -> None:
    """A process started by `enclavekit cdk` that tries an AWS hostname fails at once, and the
    guard names the host; an app's own (older) cdk CLI is bypassed with a notice."""
    app = tmp_path / "egress-app"
    app.mkdir()
    (app / "app.py").write_text(EGRESS_APP)
    (app / "cdk.json").write_text(json.dumps({"app": "python3 app.py"}))
    own_cli = app / "node_modules" / "aws-cdk"
    own_cli.mkdir(parents=True)
    (own_cli / "package.json").write_text(json.dumps({"name": "aws-cdk", "version": "2.100.0"}))
    env = {**os.environ, "AWS_PROFILE": "prod", "AWS_ACCESS_KEY_ID": "AKIAREALKEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "enclavekit", "cdk", "--state-dir", endpoint.state_dir, "synth"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0, err
    assert "enclavekit egress guard: refused sts.us-east-1.amazonaws.com:443" in err
    assert "app: cannot reach sts.us-east-1.amazonaws.com" in err and "403" in err
    assert "REACHED" not in err
    assert "bypassing the app's own cdk CLI 2.100.0" in err


@pytest.mark.slow
def test_up_and_plugin_run_cdk_behind_the_egress_guard(
    endpoint: server.EndpointInfo, tmp_path: Path
) -> None:
    """`enclavekit up` and the pytest plugin's cdk runner start the CLI as `enclavekit cdk`
    does: an app reaching for an AWS hostname is refused at once, and the failure names it."""
    from enclavekit import pytest_plugin as plugin
    from enclavekit.errors import EnclaveKitError
    from local_backend.up import Progress, up

    app = tmp_path / "egress-up-app"
    app.mkdir()
    (app / "app.py").write_text(EGRESS_APP)
    (app / "cdk.json").write_text(json.dumps({"app": "python3 app.py"}))
    refused = "enclavekit egress guard: refused sts.us-east-1.amazonaws.com:443"
    with pytest.raises(EnclaveKitError) as failed:
        up(
            app,
            state_dir=Path(endpoint.state_dir),
            port=endpoint.port,
            progress=Progress(io.StringIO()),
            run_verify=False,
        )
    message = str(failed.value)
    assert message.startswith("synth:") and refused in message, message
    assert "app: cannot reach sts.us-east-1.amazonaws.com" in message and "403" in message
    assert "REACHED" not in message

    local = plugin.LocalEndpoint(
        url=endpoint.endpoint,
        port=endpoint.port,
        state_dir=Path(endpoint.state_dir),
        pid=endpoint.pid,
    )
    run = plugin.run_cdk(local, app, ["synth"], timeout=120)
    assert run.returncode != 0 and refused in run.output, run.output
    assert "REACHED" not in run.output


def test_egress_guard_refuses_non_loopback_and_passes_loopback() -> None:
    assert is_loopback("localhost") and is_loopback("127.0.0.9") and is_loopback("[::1]")
    assert is_loopback("bucket.localhost")
    assert not is_loopback("sts.amazonaws.com") and not is_loopback("10.0.0.1")
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(1)
        port = target.getsockname()[1]
        reports = io.StringIO()
        with egress_guard(reports) as guard:
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({"http": guard.url, "https": guard.url})
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                opener.open("http://ec2.us-east-1.amazonaws.com/", timeout=10)
            assert refused.value.code == 403
            assert b"ec2.us-east-1.amazonaws.com:80" in refused.value.read()
            # a loopback destination is tunnelled through (for clients that ignore NO_PROXY)
            with socket.create_connection(("127.0.0.1", int(guard.url.rsplit(":", 1)[1]))) as c:
                c.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
                assert c.recv(100).startswith(b"HTTP/1.1 200")
                conn, _ = target.accept()
                c.sendall(b"ping")
                assert conn.recv(4) == b"ping"
                conn.close()
            assert guard.refused == ["ec2.us-east-1.amazonaws.com:80"]
    assert "refused ec2.us-east-1.amazonaws.com:80" in reports.getvalue()


def test_env_strips_only_what_reaches_an_account(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin",
        "AWS_ACCOUNT": "111122223333",
        "AWS_STAGE": "dev",
        "AWS_PROFILE": "prod",
        "aws_profile": "prod",
        "AWS_ACCESS_KEY_ID": "AKIAREAL",
        "AWS_SECRET_ACCESS_KEY": "real",
        "AWS_SESSION_TOKEN": "tok",
        "AWS_ENDPOINT_URL_STS": "https://sts.amazonaws.com",
        "AWS_CONFIG_FILE": "/home/u/.aws/config",
        "AWS_SHARED_CREDENTIALS_FILE": "/home/u/.aws/credentials",
        "AWS_ROLE_ARN": "arn:aws:iam::1:role/x",
        "AWS_CDK_DEPLOY_ROLE_ARN": "arn:aws:iam::1:role/y",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/t",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.2/c",
        "AWS_SSO_SESSION": "s",
    }
    stripped = strip_aws_env(base)
    assert stripped == {"PATH": "/usr/bin", "AWS_ACCOUNT": "111122223333", "AWS_STAGE": "dev"}

    venv = tmp_path / "user-venv"
    (venv / "bin").mkdir(parents=True)
    env = cdk_env("http://localhost:4599", cwd=tmp_path, base={**base, "VIRTUAL_ENV": str(venv)})
    assert env["AWS_ACCOUNT"] == "111122223333"
    assert env["AWS_ACCESS_KEY_ID"] == "testing" and env["AWS_ENDPOINT_URL"].endswith(":4599")
    assert "AWS_PROFILE" not in env and "AWS_ROLE_ARN" not in env
    assert "AWS_CDK_DEPLOY_ROLE_ARN" not in env and "AWS_ENDPOINT_URL_STS" not in env
    parts = env["PATH"].split(os.pathsep)
    # the project's Node.js and cdk first, then the user's venv, then the user's PATH
    assert parts.index(str(venv / "bin")) < parts.index("/usr/bin")
    assert str(Path(sys.executable).parent) not in parts[: parts.index(str(venv / "bin"))]


def test_container_assets_never_reach_a_registry(tmp_path: Path) -> None:
    """CDK_DOCKER is a client that refuses with one line naming the image assets, so no
    `docker login` / `push` can reach the real ECR host."""
    app = tmp_path / "app"
    (app / "cdk.out").mkdir(parents=True)
    manifest = {
        "dockerImages": {
            "abc123": {"displayName": "AppImage", "source": {"directory": "asset.abc123"}},
            "def456": {"source": {"directory": "asset.def456"}},
        }
    }
    (app / "cdk.out" / "ImageStack.assets.json").write_text(json.dumps(manifest))
    env = cdk_env("http://localhost:4599", cwd=app, base={"PATH": os.environ["PATH"]})
    docker = env["CDK_DOCKER"]
    login = ["login", "--username", "AWS", "123456789012.dkr.ecr.us-east-1.amazonaws.com"]
    for args, cwd in ((login, app), (["build", "."], app / "cdk.out")):
        proc = subprocess.run(
            [docker, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env
        )
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "container image asset AppImage, asset.def456 cannot be published" in lines[0]
        assert f"docker {args[0]} refused" in lines[0]


# ------------------------------------------------------------------ pieces, without the CLI


def test_generated_password_follows_aws_rules() -> None:
    from local_backend.moto_ext.secretsmanager.models import generate_password, secret_string

    for _ in range(20):
        pw = generate_password({"PasswordLength": 12, "ExcludePunctuation": True})
        assert len(pw) == 12 and pw.isalnum()
        assert any(c.islower() for c in pw) and any(c.isupper() for c in pw)
        assert any(c.isdigit() for c in pw)
    assert set(generate_password({"ExcludeCharacters": "abc", "PasswordLength": 64})).isdisjoint(
        "abc"
    )
    value = json.loads(
        secret_string(
            {
                "GenerateSecretString": {
                    "SecretStringTemplate": '{"user": "u"}',
                    "GenerateStringKey": "pw",
                }
            }
        )
    )
    assert value["user"] == "u" and len(value["pw"]) == 32


def test_deletion_runs_dependents_first() -> None:
    from local_backend.moto_ext.cloudformation.ordering import deletion_order

    resources = {
        "Fn": {"Properties": {"Role": {"Fn::GetAtt": ["Role", "Arn"]}}},
        "Role": {},
        "Custom": {"Properties": {"ServiceToken": {"Fn::GetAtt": "Fn.Arn"}}},
        "Log": {"Properties": {"LogGroupName": {"Fn::Sub": "/aws/lambda/${Fn}"}}},
        "After": {"DependsOn": "Custom"},
    }
    order = deletion_order(resources)
    assert order.index("After") < order.index("Custom") < order.index("Fn") < order.index("Role")
    assert order.index("Log") < order.index("Fn")


def test_custom_resource_properties_are_strings() -> None:
    from local_backend.moto_ext.cloudformation.custom_resource import stringify

    assert stringify({"N": 3, "On": True, "L": [1, {"x": False}], "S": "s"}) == {
        "N": "3",
        "On": "true",
        "L": ["1", {"x": "false"}],
        "S": "s",
    }


def test_unexpected_handler_error_is_internal_failure_not_html() -> None:
    from moto.core.responses import BaseResponse

    from local_backend.moto_ext import internal_failure

    internal_failure.install(Path("."))

    class Broken(BaseResponse):
        def __init__(self) -> None:
            super().__init__(service_name="cloudformation")

        def call_original(self) -> None:
            raise KeyError("arn:aws:cloudformation:stack/gone")

    resp = Broken()
    resp._get_action = lambda: "DescribeStacks"  # type: ignore[method-assign]
    original = internal_failure._original_call_action
    internal_failure._original_call_action = Broken.call_original  # type: ignore[assignment]
    try:
        status, headers, body = internal_failure.call_action(resp)
    finally:
        internal_failure._original_call_action = original
    text = body.decode() if isinstance(body, bytes) else str(body)
    assert status == 500 and headers["status"] == "500"
    assert "<Code>InternalFailure</Code>" in text and "KeyError" in text
    assert "<html" not in text.lower()
