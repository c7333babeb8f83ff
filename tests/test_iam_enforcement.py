"""IAM enforced by the real endpoint (a subprocess), with AWS's error codes per service.

One endpoint for the module. Principals are made through the IAM API as a user would: a user
with no policy, roles with inline/managed policies, a group. Each denial checks the service's
own error shape; each SigV4 tampering is sent on the wire and refused.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from enclavekit.localenv import LOCAL_ACCESS_KEY_ID, LOCAL_ACCOUNT, LOCAL_REGION
from enclavekit.localenv import LOCAL_SECRET_ACCESS_KEY as LOCAL_SECRET
from local_backend import server
from local_backend.moto_ext.identity import (
    EC2_SERVICE_ACCESS_KEY_ID,
    EC2_SERVICE_SECRET_ACCESS_KEY,
)
from local_backend.pytest_plugin import free_port

# The real endpoint as a subprocess (module fixture) for almost every test.
pytestmark = pytest.mark.slow

ROOT = {"aws_access_key_id": LOCAL_ACCESS_KEY_ID, "aws_secret_access_key": LOCAL_SECRET}
EC2 = {
    "aws_access_key_id": EC2_SERVICE_ACCESS_KEY_ID,
    "aws_secret_access_key": EC2_SERVICE_SECRET_ACCESS_KEY,
}
BUCKET = "iam-test-bucket"
PARAM_ARN = f"arn:aws:ssm:{LOCAL_REGION}:{LOCAL_ACCOUNT}:parameter/app/secret"
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
ACCOUNT_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": LOCAL_ACCOUNT}, "Action": "sts:AssumeRole"}
    ],
}


def _doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(action: str | list[str], resource: str | list[str] = "*") -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


class Ep:
    def __init__(self, info: server.EndpointInfo) -> None:
        self.info = info
        self.url = info.endpoint

    def client(self, service: str, creds: dict[str, str] | None = None) -> Any:
        return boto3.client(
            service, endpoint_url=self.url, region_name=LOCAL_REGION, **(creds or ROOT)
        )

    def user(self, name: str, *statements: dict[str, Any]) -> dict[str, str]:
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if statements:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=_doc(*statements))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }

    def role(self, name: str, trust: dict[str, Any], *statements: dict[str, Any]) -> str:
        iam = self.client("iam")
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"][
            "Arn"
        ]
        if statements:
            iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=_doc(*statements))
        return str(arn)

    def session(self, role_arn: str, creds: dict[str, str] | None = None) -> dict[str, str]:
        c = self.client("sts", creds).assume_role(RoleArn=role_arn, RoleSessionName="tt")[
            "Credentials"
        ]
        return {
            "aws_access_key_id": c["AccessKeyId"],
            "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"],
        }

    def log(self) -> str:
        return (Path(self.info.state_dir) / server.LOG_FILE).read_text(errors="replace")


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ep]:
    state = tmp_path_factory.mktemp("iam-state")
    info = server.start(free_port(), state)
    try:
        e = Ep(info)
        s3 = e.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="data/a.txt", Body=b"hello")
        e.client("ssm").put_parameter(Name="/app/secret", Value="v", Type="String")
        yield e
    finally:
        server.stop(state)


def _err(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as info:
        call()
    r = info.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


# ------------------------------------------------------------------ no policy, no access

CALLS: list[tuple[str, Callable[[Any], Any], int, str, str]] = [
    ("s3", lambda c: c.get_object(Bucket=BUCKET, Key="data/a.txt"), 403, "AccessDenied",
     f"s3:GetObject on resource: arn:aws:s3:::{BUCKET}/data/a.txt"),
    ("s3", lambda c: c.list_buckets(), 403, "AccessDenied", "s3:ListAllMyBuckets"),
    ("s3", lambda c: c.put_object(Bucket=BUCKET, Key="x", Body=b"x"), 403, "AccessDenied",
     "s3:PutObject"),
    ("ssm", lambda c: c.get_parameter(Name="/app/secret"), 400, "AccessDeniedException",
     f"ssm:GetParameter on resource: {PARAM_ARN}"),
    ("iam", lambda c: c.get_role(RoleName="nobody-role"), 403, "AccessDenied", "iam:GetRole"),
    ("iam", lambda c: c.create_user(UserName="evil"), 403, "AccessDenied", "iam:CreateUser"),
    ("sts", lambda c: c.assume_role(RoleArn=f"arn:aws:iam::{LOCAL_ACCOUNT}:role/acct-role",
                                    RoleSessionName="xx"), 403, "AccessDenied", "sts:AssumeRole"),
    ("ec2", lambda c: c.describe_instances(), 403, "UnauthorizedOperation",
     "ec2:DescribeInstances"),
    ("ec2", lambda c: c.get_associated_enclave_certificate_iam_roles(
        CertificateArn=f"arn:aws:acm:{LOCAL_REGION}:{LOCAL_ACCOUNT}:certificate/abc"),
     403, "UnauthorizedOperation",
     f"ec2:GetAssociatedEnclaveCertificateIamRoles on resource: arn:aws:acm:{LOCAL_REGION}"),
    ("acm", lambda c: c.list_certificates(), 400, "AccessDeniedException", "acm:ListCertificates"),
    ("secretsmanager", lambda c: c.get_secret_value(SecretId="s"), 400, "AccessDeniedException",
     "secretsmanager:GetSecretValue"),
    ("cloudformation", lambda c: c.describe_stacks(), 403, "AccessDenied",
     "cloudformation:DescribeStacks"),
    ("autoscaling", lambda c: c.describe_auto_scaling_groups(), 403, "AccessDenied",
     "autoscaling:DescribeAutoScalingGroups"),
]  # fmt: skip


@pytest.fixture(scope="module")
def nobody(ep: Ep) -> dict[str, str]:
    ep.role("acct-role", ACCOUNT_TRUST)
    return ep.user("nobody")


@pytest.mark.parametrize(("service", "call", "status", "code", "text"), CALLS)
def test_user_without_policy_is_denied_everything(
    ep: Ep,
    nobody: dict[str, str],
    service: str,
    call: Callable[[Any], Any],
    status: int,
    code: str,
    text: str,
) -> None:
    got_status, got_code, message = _err(lambda: call(ep.client(service, nobody)))
    assert (got_status, got_code) == (status, code), message
    assert f"User: arn:aws:iam::{LOCAL_ACCOUNT}:user/nobody is not authorized" in message
    assert text in message and "because no identity-based policy allows" in message


def test_root_keeps_full_access_and_caller_identity_needs_no_grant(
    ep: Ep, nobody: dict[str, str]
) -> None:
    assert ep.client("s3").get_object(Bucket=BUCKET, Key="data/a.txt")["Body"].read() == b"hello"
    arn = ep.client("sts", nobody).get_caller_identity()["Arn"]
    assert arn == f"arn:aws:iam::{LOCAL_ACCOUNT}:user/nobody"


# ------------------------------------------------------------------ escalation


def test_role_cannot_edit_its_own_policies_unless_allowed(ep: Ep) -> None:
    arn = ep.role("climber", ACCOUNT_TRUST, _allow("s3:GetObject", f"arn:aws:s3:::{BUCKET}/*"))
    me = ep.session(arn)
    iam = ep.client("iam", me)
    admin = _doc(_allow("*"))
    for attempt in (
        lambda: iam.put_role_policy(RoleName="climber", PolicyName="x", PolicyDocument=admin),
        lambda: iam.attach_role_policy(
            RoleName="climber", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess"
        ),
        lambda: iam.update_assume_role_policy(RoleName="climber", PolicyDocument=admin),
    ):
        status, code, message = _err(attempt)
        assert (status, code) == (403, "AccessDenied")
        assert "assumed-role/climber/tt is not authorized to perform: iam:" in message
        assert f"arn:aws:iam::{LOCAL_ACCOUNT}:role/climber" in message
    assert _err(lambda: ep.client("ssm", me).get_parameter(Name="/app/secret"))[1] == (
        "AccessDeniedException"
    )
    # Once a policy allows iam:PutRolePolicy on the role, the same call works, and the new
    # policy counts from the next request on.
    ep.client("iam").put_role_policy(
        RoleName="climber",
        PolicyName="may-edit",
        PolicyDocument=_doc(_allow("iam:PutRolePolicy", arn)),
    )
    iam.put_role_policy(
        RoleName="climber", PolicyName="ssm", PolicyDocument=_doc(_allow("ssm:GetParameter"))
    )
    assert ep.client("ssm", me).get_parameter(Name="/app/secret")["Parameter"]["Value"] == "v"


# ------------------------------------------------------------------ trust policies


def test_instance_assumes_only_roles_that_trust_ec2(ep: Ep) -> None:
    ok = ep.role("host-ok", EC2_TRUST)
    lambda_only = ep.role(
        "host-lambda",
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        },
    )
    assert ep.session(ok, EC2)["aws_access_key_id"]
    status, code, message = _err(lambda: ep.session(lambda_only, EC2))
    assert (status, code) == (403, "AccessDenied")
    assert "User: ec2.amazonaws.com is not authorized to perform: sts:AssumeRole" in message
    assert "because no resource-based policy allows the sts:AssumeRole action" in message
    # The account root is not EC2: a role that trusts only the EC2 service is not its to assume.
    assert _err(lambda: ep.session(ok))[1] == "AccessDenied"
    # EC2's key is good for STS only.
    assert _err(lambda: ep.client("s3", EC2).list_buckets())[1] == "InvalidAccessKeyId"


def test_same_account_trust_of_the_account_needs_an_identity_grant(ep: Ep) -> None:
    target = ep.role("deployer", ACCOUNT_TRUST)
    without = ep.user("no-assume")
    assert _err(lambda: ep.session(target, without))[1] == "AccessDenied"
    allowed = ep.user("may-assume", _allow("sts:AssumeRole", target))
    assert ep.session(target, allowed)["aws_session_token"]


# ------------------------------------------------------------------ policy kinds


def test_explicit_deny_wins_and_groups_and_managed_policies_count(ep: Ep) -> None:
    iam = ep.client("iam")
    u = ep.user(
        "mixed",
        _allow("s3:*"),
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/data/*"},
    )
    status, code, message = _err(
        lambda: ep.client("s3", u).get_object(Bucket=BUCKET, Key="data/a.txt")
    )
    assert code == "AccessDenied" and "with an explicit deny in an identity-based policy" in message
    assert ep.client("s3", u).list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1

    g = ep.user("grouped")
    iam.create_group(GroupName="readers")
    iam.add_user_to_group(GroupName="readers", UserName="grouped")
    assert _err(lambda: ep.client("ssm", g).get_parameter(Name="/app/secret"))[1] == (
        "AccessDeniedException"
    )
    iam.put_group_policy(
        GroupName="readers", PolicyName="ssm", PolicyDocument=_doc(_allow("ssm:GetParameter"))
    )
    assert ep.client("ssm", g).get_parameter(Name="/app/secret")["Parameter"]["Value"] == "v"

    m = ep.user("managed")
    iam.attach_user_policy(
        UserName="managed", PolicyArn="arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"
    )
    assert ep.client("s3", m).get_object(Bucket=BUCKET, Key="data/a.txt")["Body"].read()
    assert _err(lambda: ep.client("s3", m).put_object(Bucket=BUCKET, Key="y", Body=b"y"))[1] == (
        "AccessDenied"
    )
    core = iam.get_policy(PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore")
    assert core["Policy"]["PolicyName"] == "AmazonSSMManagedInstanceCore"


def test_bucket_policy_allows_denies_and_governs_anonymous(ep: Ep) -> None:
    s3 = ep.client("s3")
    s3.create_bucket(Bucket="policy-bucket")
    s3.put_object(Bucket="policy-bucket", Key="pub/x", Body=b"public")
    s3.put_object(Bucket="policy-bucket", Key="priv/x", Body=b"private")
    reader = ep.user("bucket-reader")
    anon_url = f"{ep.url}/policy-bucket/pub/x"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(anon_url, timeout=10)
    assert info.value.code == 403 and b"<Code>AccessDenied</Code>" in info.value.read()
    s3.put_bucket_policy(
        Bucket="policy-bucket",
        Policy=_doc(
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::policy-bucket/pub/*",
            },
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{LOCAL_ACCOUNT}:user/bucket-reader"},
                "Action": "s3:ListBucket",
                "Resource": "arn:aws:s3:::policy-bucket",
                "Condition": {"StringLike": {"s3:prefix": "pub/*"}},
            },
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::policy-bucket/priv/*",
            },
        ),
    )
    with urllib.request.urlopen(anon_url, timeout=10) as r:
        assert r.read() == b"public"
    listed = ep.client("s3", reader).list_objects_v2(Bucket="policy-bucket", Prefix="pub/")
    assert listed["KeyCount"] == 1
    assert _err(lambda: ep.client("s3", reader).list_objects_v2(Bucket="policy-bucket"))[1] == (
        "AccessDenied"
    )
    status, code, message = _err(lambda: s3.get_object(Bucket="policy-bucket", Key="priv/x"))
    assert code == "AccessDenied" and "explicit deny in a resource-based policy" in message


def test_secrets_manager_resource_policy(ep: Ep) -> None:
    sm = ep.client("secretsmanager")
    arn = sm.create_secret(Name="app-token", SecretString="tok")["ARN"]
    reader = ep.user("secret-reader")
    assert _err(lambda: ep.client("secretsmanager", reader).get_secret_value(SecretId=arn))[1] == (
        "AccessDeniedException"
    )
    sm.put_resource_policy(
        SecretId=arn,
        ResourcePolicy=_doc(
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{LOCAL_ACCOUNT}:user/secret-reader"},
                "Action": "secretsmanager:GetSecretValue",
                "Resource": "*",
            }
        ),
    )
    got = ep.client("secretsmanager", reader).get_secret_value(SecretId="app-token")
    assert got["SecretString"] == "tok"


# ------------------------------------------------------------------ SigV4 on the wire


def _send(
    ep: Ep,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    service: str,
    *,
    mutate: Callable[[dict[str, str]], dict[str, str]] | None = None,
    secret: str = LOCAL_SECRET,
    sign_exclude: tuple[str, ...] = (),
    body_after: bytes | None = None,
) -> tuple[int, bytes]:
    """Sign with botocore (optionally leaving `sign_exclude` out), tamper, send raw."""
    url = ep.url + path
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    held = {k: req.headers[k] for k in sign_exclude if k in req.headers}
    for k in held:
        del req.headers[k]
    auth = S3SigV4Auth if service == "s3" else SigV4Auth
    auth(Credentials(LOCAL_ACCESS_KEY_ID, secret), service, LOCAL_REGION).add_auth(req)
    sent = {**dict(req.headers.items()), **held}
    if mutate is not None:
        sent = mutate(sent)
    data = body if body_after is None else body_after
    r = urllib.request.Request(url, data=data or None, method=method, headers=sent)
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


SSM_BODY = json.dumps({"Name": "/app/secret"}).encode()
SSM_HEADERS = {
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Target": "AmazonSSM.GetParameter",
}
KMS_HEADERS = {
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Target": "TrentService.ListKeys",
}
STS_BODY = b"Action=GetCallerIdentity&Version=2011-06-15"
STS_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def _code(body: bytes) -> str:
    text = body.decode(errors="replace")
    m = re.search(r"<Code>([^<]+)</Code>", text)
    if m:
        return m.group(1)
    return str(json.loads(text).get("__type"))


def test_signed_requests_pass(ep: Ep) -> None:
    assert _send(ep, "POST", "/", SSM_BODY, SSM_HEADERS, "ssm")[0] == 200
    assert _send(ep, "POST", "/", STS_BODY, STS_HEADERS, "sts")[0] == 200
    assert _send(ep, "GET", f"/{BUCKET}/data/a.txt", b"", {}, "s3") == (200, b"hello")


@pytest.mark.parametrize(
    ("name", "kwargs", "status", "code"),
    [
        # X-Amz-Target left out of SignedHeaders, then swapped: the operation is not signed
        ("target-unsigned-ssm", dict(body=SSM_BODY, headers=SSM_HEADERS, service="ssm",
         sign_exclude=("X-Amz-Target",)), 400, "InvalidSignatureException"),
        ("target-unsigned-kms", dict(body=b"{}", headers=KMS_HEADERS, service="kms",
         sign_exclude=("X-Amz-Target",)), 400, "InvalidSignatureException"),
        ("target-swapped", dict(body=SSM_BODY, headers=SSM_HEADERS, service="ssm",
         mutate=lambda h: {**h, "X-Amz-Target": "AmazonSSM.DeleteParameter"}), 400,
         "InvalidSignatureException"),
        ("body-tampered-json", dict(body=SSM_BODY, headers=SSM_HEADERS, service="ssm",
         body_after=json.dumps({"Name": "/app/other"}).encode()), 400,
         "InvalidSignatureException"),
        ("body-tampered-query", dict(body=STS_BODY, headers=STS_HEADERS, service="sts",
         body_after=STS_BODY.replace(b"GetCallerIdentity", b"GetSessionToken")), 403,
         "SignatureDoesNotMatch"),
        ("wrong-secret-query", dict(body=STS_BODY, headers=STS_HEADERS, service="sts",
         secret="wrong"), 403, "SignatureDoesNotMatch"),
        ("unknown-key-query", dict(body=STS_BODY, headers=STS_HEADERS, service="sts",
         mutate=lambda h: {**h, "Authorization": h["Authorization"].replace(
             f"Credential={LOCAL_ACCESS_KEY_ID}/", "Credential=AKIAUNKNOWN000000/")}), 403,
         "InvalidClientTokenId"),
        ("date-unsigned", dict(body=STS_BODY, headers=STS_HEADERS, service="sts",
         mutate=lambda h: {**h, "Authorization": h["Authorization"].replace(
             "host;x-amz-date", "host")}), 400, "IncompleteSignature"),
        ("no-authorization-json", dict(body=SSM_BODY, headers=SSM_HEADERS, service="ssm",
         mutate=lambda h: {k: v for k, v in h.items() if k != "Authorization"}), 403,
         "MissingAuthenticationTokenException"),
        ("no-authorization-query", dict(body=STS_BODY, headers=STS_HEADERS, service="sts",
         mutate=lambda h: {k: v for k, v in h.items() if k != "Authorization"}), 403,
         "MissingAuthenticationToken"),
    ],
)  # fmt: skip
def test_sigv4_tampering_refused(
    ep: Ep, name: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    got_status, body = _send(ep, "POST", "/", **kwargs)
    assert (got_status, _code(body)) == (status, code), body[:300]


S3_PATH = f"/{BUCKET}/data/tampered.txt"


def test_s3_payload_swapped_under_a_signed_hash(ep: Ep) -> None:
    status, body = _send(ep, "PUT", S3_PATH, b"original", {}, "s3", body_after=b"evil!!!!")
    assert (status, _code(body)) == (400, "XAmzContentSHA256Mismatch")
    assert (
        _err(lambda: ep.client("s3").head_object(Bucket=BUCKET, Key="data/tampered.txt"))[0] == 404
    )


def test_s3_unsigned_amz_header(ep: Ep) -> None:
    status, body = _send(
        ep, "PUT", S3_PATH, b"x", {"x-amz-acl": "public-read"}, "s3", sign_exclude=("x-amz-acl",)
    )
    assert (status, _code(body)) == (403, "AccessDenied")
    assert b"<HeadersNotSigned>x-amz-acl</HeadersNotSigned>" in body


def test_s3_signed_header_changed(ep: Ep) -> None:
    status, body = _send(
        ep, "PUT", S3_PATH, b"x", {"x-amz-acl": "private"}, "s3",
        mutate=lambda h: {**h, "x-amz-acl": "public-read"},
    )  # fmt: skip
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")


def test_s3_without_authorization_is_anonymous(ep: Ep) -> None:
    """No Authorization at all: ListAllMyBuckets is nobody's (moto used to answer it)."""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(ep.url + "/", timeout=10)
    assert info.value.code == 403 and _code(info.value.read()) == "AccessDenied"


def test_moto_control_api_is_not_reachable(ep: Ep) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(ep.url + "/moto-api/reset", method="POST"))
    assert info.value.code == 404  # never served, whatever --iam says (server._app)
    assert ep.client("s3").head_bucket(Bucket=BUCKET)  # nothing was reset


# ------------------------------------------------------------------ unmapped, and off


def test_unmapped_call_is_allowed_with_a_warning_naming_it(ep: Ep, nobody: dict[str, str]) -> None:
    ep.client("sqs", nobody).list_queues()
    deadline = time.monotonic() + 5
    while "sqs:ListQueues is not mapped" not in ep.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "IAM: sqs:ListQueues is not mapped to an IAM action and resource" in ep.log()


def test_iam_off_is_moto_behaviour_and_shown_in_status(tmp_path: Path) -> None:
    state = tmp_path / "off"
    info = server.start(free_port(), state, iam="off")
    try:
        assert info.iam == "off"
        st = server.status(state)
        assert st.extra["iam"] == "off" and st.to_json()["iam"] == "off"
        e = Ep(info)
        nobody = e.user("nobody")
        assert e.client("s3", nobody).list_buckets()["Buckets"] == []
    finally:
        server.stop(state)


def test_unmapped_operations_are_counted_and_documented() -> None:
    from local_backend.moto_ext.iam_authz import actions

    services = actions.served_services()
    unmapped = actions.unmapped_operations(services)
    for svc in ("s3", "ssm", "sts", "iam", "ec2", "acm", "secretsmanager", "cloudformation"):
        assert svc in services and svc not in unmapped, svc
    count = sum(len(ops) for ops in unmapped.values())
    doc = (Path(__file__).resolve().parent.parent / "docs" / "limitations.md").read_text()
    assert f"Of the {len(services)} services moto serves, {len(unmapped)} services ({count} " in (
        doc
    ), (len(services), len(unmapped), count)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _presigner(ep: Ep, creds: dict[str, str] | None = None) -> Any:
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=ep.url,
        region_name=LOCAL_REGION,
        config=Config(signature_version="s3v4"),
        **(creds or ROOT),
    )


def test_presigned_urls_carry_their_signer(ep: Ep, nobody: dict[str, str]) -> None:
    """Query-string SigV4: the signer's permissions, the signed path, the expiry."""
    params = {"Bucket": BUCKET, "Key": "data/a.txt"}
    url = _presigner(ep).generate_presigned_url("get_object", Params=params, ExpiresIn=300)
    assert _get(url) == (200, b"hello")
    status, body = _get(url.replace("data/a.txt", "data/b.txt"))  # another object, same sig
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")
    as_nobody = _presigner(ep, nobody).generate_presigned_url("get_object", Params=params)
    status, body = _get(as_nobody)
    assert (status, _code(body)) == (403, "AccessDenied") and b"user/nobody" in body
    short = _presigner(ep).generate_presigned_url("get_object", Params=params, ExpiresIn=1)
    time.sleep(2.1)
    status, body = _get(short)
    assert (status, _code(body)) == (403, "AccessDenied") and b"Request has expired" in body
