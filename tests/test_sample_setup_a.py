"""The sample app as `make demo` deploys it: set-up A (nginx on the parent, the certificate's key
in ACM's enclave) and set-up B (the image's sealed secret), with the real cdk CLI through `up`.

The web host boots from the user data our constructs render — `dnf install
aws-nitro-enclaves-acm nginx`, acm.yaml, the nginx and OpenSSL edits — in a local Amazon Linux
host; the agent boots ACM's enclave image, which alone may decrypt the association's key.
`verify` then proves, for that host: HTTPS from nginx with the association's certificate and a
chain to the local CA, every handshake signed by the enclave's token (signatures counted), the
key absent from nginx's master and workers, the agent, every state and log file and present in
the enclave. Also here: the host role without attestation is denied the association key, as
any process of the parent (or an administrator with its IMDS credentials) would be.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from e2e_support import copy_sample_app

from enclavekit import pytest_plugin as plugin
from local_backend import up
from local_backend.moto_ext.identity import (
    EC2_SERVICE_ACCESS_KEY_ID,
    EC2_SERVICE_SECRET_ACCESS_KEY,
)

pytestmark = pytest.mark.slow
STACK = "EnclaveServiceA"


@pytest.fixture
def ep(tmp_path: Path) -> Iterator[plugin.LocalEndpoint]:
    """An endpoint of its own: `up` verifies every host of the state dir."""
    endpoint = plugin.start_endpoint(tmp_path / "state")
    try:
        yield endpoint
    finally:
        plugin.stop_endpoint(endpoint)


def test_sample_app_set_up_a_and_b_verify(ep: plugin.LocalEndpoint, tmp_path: Path) -> None:
    app = copy_sample_app(tmp_path / "app", stack_name=STACK, context={"web_host": True})
    out = io.StringIO()
    result = up.up(app, state_dir=ep.state_dir, port=ep.port, progress=up.Progress(out))
    assert result.report is not None, out.getvalue()
    report = result.report
    assert result.ok, report.table()
    checks = {(h.logical_id.split("/")[-1][:7], c.name): c for h in report.hosts for c in h.checks}
    for name in (
        "boot",
        "enclaves",
        "parent-denied",
        "nsm-parent-refused",
        "https",
        "key-not-on-parent",
    ):
        c = checks[("WebHost", name)]
        assert c.ok and c.applies, (name, c.detail)
    assert "signatures by the ACM enclave's token" in checks[("WebHost", "https")].detail
    assert "nginx" in checks[("WebHost", "key-not-on-parent")].detail
    for name in ("image-pcrs", "secret", "parent-denied", "debug-denied", "other-image-denied"):
        assert checks[("HostF59", name)].ok, name
    assert not checks[("HostF59", "https")].applies  # set-up B serves no TLS

    # The web host's role, as its IMDS hands it to any process of the parent, gets the S3
    # object but not the key inside it: kms:Decrypt only for ACM's attested enclave image.
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in ep.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"][0][
            "Outputs"
        ]
    }
    sts = ep.client(
        "sts",
        aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
    )
    c = sts.assume_role(RoleArn=outputs["WebRoleArn"], RoleSessionName="admin-on-parent")[
        "Credentials"
    ]
    creds = {
        "aws_access_key_id": c["AccessKeyId"],
        "aws_secret_access_key": c["SecretAccessKey"],
        "aws_session_token": c["SessionToken"],
    }
    cert_arn = next(
        s["CertificateArn"]
        for s in ep.client("acm").list_certificates()["CertificateSummaryList"]
        if any(
            r["AssociatedRoleArn"] == outputs["WebRoleArn"]
            for r in ep.client("ec2").get_associated_enclave_certificate_iam_roles(
                CertificateArn=s["CertificateArn"]
            )["AssociatedRoles"]
        )
    )
    [role] = [
        r
        for r in ep.client("ec2", **creds).get_associated_enclave_certificate_iam_roles(
            CertificateArn=cert_arn
        )["AssociatedRoles"]
        if r["AssociatedRoleArn"] == outputs["WebRoleArn"]
    ]
    body = ep.client("s3", **creds).get_object(
        Bucket=role["CertificateS3BucketName"], Key=role["CertificateS3ObjectKey"]
    )["Body"]
    sealed = json.loads(body.read())
    with pytest.raises(ClientError) as denied:
        ep.client("kms", **creds).decrypt(
            CiphertextBlob=base64.b64decode(sealed["encryptedPrivateKey"])
        )
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
