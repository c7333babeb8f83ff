"""ACM for Nitro Enclaves set-up A from AWS's own installation steps, deployed with the AWS CLI.

tests/fixtures/acm/acm-nginx-host.yaml is written only from AWS's "Installing ACM for Nitro
Enclaves" steps (no enclavekit construct or Metadata): certificate, role + instance profile,
the association, the three grants, and an AL2023 m5a.xlarge whose user data installs
`aws-nitro-enclaves-acm nginx`, edits the stock nginx.conf as AWS's script does, writes
acm.yaml and starts `nitro-enclaves-acm`. One deployment carries, in order: HTTPS from the
real nginx through the instance's forwarded 443 with the association's certificate and chain,
each handshake signed in the ACM enclave (the token's signature count grows); a broken
acm.yaml is one line in the journal; a killed ACM enclave is detected and recovered; each
missing grant (s3:GetObject, kms:Decrypt, iam:GetRole with a role path) leaves nginx without a
key and the agent's journal names the denied call.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from enclavekit.localenv import local_aws_env
from local_backend.host import control, hooks
from local_backend.host.catalog_acm import ensure_acm_image
from local_backend.host.layout import HostLayout, instance_layout

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "fixtures" / "acm" / "acm-nginx-host.yaml"
BIN = Path(sys.executable).parent
DOMAIN = "acm.example.test"
STANZA = "/etc/pki/nginx/nginx-acm.conf"
LABEL = "nginx-acm-token"
AGENT = "nitro-enclaves-acm"


@dataclass
class World:
    ep: Any
    tmp: Path
    layout: HostLayout
    instance_id: str
    certificate_arn: str
    role_name: str

    def journal(self) -> str:
        return control.host_exec(self.layout, ["journalctl", "-u", AGENT]).stdout

    def logs(self) -> str:
        """The agent's and nginx's journals and nginx's error log (failure context)."""
        nginx = self.sh("journalctl -u nginx | tail -12; tail -6 /var/log/nginx/error.log")
        return nginx.stdout[-2500:] + nginx.stderr + "\n--- agent ---\n" + self.journal()[-3400:]

    def sh(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return control.host_exec(self.layout, ["bash", "-c", script], timeout=timeout)

    def https_port(self) -> int:
        row = next(
            r
            for r in hooks.hosts_status(Path(self.ep.state_dir))
            if r["instance_id"] == self.instance_id
        )
        return next(p["host_port"] for p in row["ports"] if p["port"] == 443)


def _aws(ep: Any, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = local_aws_env(ep.url, scratch_dir=tmp / "aws")
    return subprocess.run(
        [str(BIN / "aws"), *args], env=env, capture_output=True, text=True, timeout=600
    )


def _wait(what: str, ok: Callable[[], Any], timeout: float, why: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout:.0f} s:\n{why()[-6000:]}")


@pytest.fixture(scope="module")
def world(enclavekit_endpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ensure_acm_image()  # the package's p11ne.eif, built on the machine
    tmp = tmp_path_factory.mktemp("acm")
    out = _aws(
        enclavekit_endpoint,
        tmp,
        "cloudformation",
        "deploy",
        "--template-file",
        str(TEMPLATE),
        "--stack-name",
        "acm-nginx",
        "--capabilities",
        "CAPABILITY_IAM",
        "--parameter-overrides",
        f"DomainName={DOMAIN}",
        "RolePath=/acm/",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    cfn = enclavekit_endpoint.client("cloudformation")
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in cfn.describe_stacks(StackName="acm-nginx")["Stacks"][0]["Outputs"]
    }
    layout = instance_layout(Path(enclavekit_endpoint.state_dir), outputs["InstanceId"])
    host = control.wait_booted(layout, timeout=300)
    assert control.boot_error(host) is None, layout.console.read_text()[-4000:]
    yield World(
        enclavekit_endpoint,
        tmp,
        layout,
        outputs["InstanceId"],
        outputs["CertificateArn"],
        outputs["RoleName"],
    )
    _aws(enclavekit_endpoint, tmp, "cloudformation", "delete-stack", "--stack-name", "acm-nginx")


def _handshake(port: int, cadata: str) -> tuple[bytes, str]:
    """GET / over TLS 1.2, verified against the association's chain: (leaf DER, body)."""
    ctx = ssl.create_default_context(cadata=cadata)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        leaf = tls.getpeercert(binary_form=True)
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    assert leaf is not None
    return leaf, data.split(b"\r\n\r\n", 1)[1].decode(errors="replace")


def _sent_chain(port: int) -> list[x509.Certificate]:
    """The certificates nginx sends, as `openssl s_client -showcerts` prints them."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", DOMAIN,
         "-showcerts", "-tls1_2"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return x509.load_pem_x509_certificates(out.stdout.encode())


def _serves(w: World, cadata: str) -> bool:
    with contextlib.suppress(OSError, ssl.SSLError, AssertionError, StopIteration):
        _handshake(w.https_port(), cadata)
        return True
    return False


def _signatures(w: World) -> int:
    """DescribeToken over the enclave's RPC port, from inside the host (the PIN is the one the
    agent wrote into the stanza)."""
    stanza = w.sh(f"cat {STANZA}").stdout
    pin = stanza.split("pin-value=", 1)[1].split('"', 1)[0]
    code = (
        "import json, subprocess\n"
        "from local_backend.host.acm_agent import rpc_call\n"
        "cid = json.loads(subprocess.run(['nitro-cli', 'describe-enclaves'],"
        " capture_output=True).stdout)[0]['EnclaveCID']\n"
        f"print(json.dumps(rpc_call(cid, 10000, {{'DescribeToken': {{'label': {LABEL!r},"
        f" 'pin': {pin!r}}}}})))\n"
    )
    out = control.host_exec(w.layout, [sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["TokenDescription"]["signatures"])


def _acm_pem(w: World) -> tuple[str, str]:
    got = w.ep.client("acm").get_certificate(CertificateArn=w.certificate_arn)
    return got["Certificate"], got["CertificateChain"]


def test_nginx_serves_the_association_certificate_with_the_key_in_the_enclave(
    world: World,
) -> None:
    w = world
    cert_pem, chain_pem = _acm_pem(w)
    _wait("nginx serving HTTPS", lambda: _serves(w, chain_pem), 120, w.logs)
    stanza = w.sh(f"stat -c '%a %U' {STANZA} && cat {STANZA}").stdout
    hexlabel = LABEL.encode().hex()
    assert stanza.startswith("440 nginx\n"), stanza
    assert (
        'ssl_certificate_key "engine:pkcs11:pkcs11:model=p11ne-token;manufacturer=Amazon;'
        f"token={LABEL};id=%01;object=acm-key;type=private?pin-value="
    ) in stanza
    assert f'ssl_certificate "/run/nitro_enclaves/acm/nginx-cert-{hexlabel}.pem";' in stanza
    module = w.sh("cat /etc/pkcs11/modules/p11ne.module").stdout
    assert module.startswith("remote:unix:path=/run/nitro_enclaves/emulator/vsock/") and (
        "/9999\nmodule:p11ne\n" in module
    ), module
    before = _signatures(w)
    leaf, body = _handshake(w.https_port(), chain_pem)
    after = _signatures(w)
    assert after >= before + 1, (before, after)  # the handshake was signed in the enclave
    assert "Welcome to nginx!" in body
    want = x509.load_pem_x509_certificates((cert_pem + "\n" + chain_pem).encode())
    assert leaf == want[0].public_bytes(serialization.Encoding.DER)
    assert _sent_chain(w.https_port()) == want  # the certificate and the association's chain
    journal = w.journal()
    assert "Syncing token nginx-acm-token" in journal, journal
    # `enclavekit verify` of this host, written without our constructs: every check of an ACM
    # agent host applies and passes (the signatures, the key search, the role denied the key)
    from local_backend import verify

    report = verify.verify(Path(w.ep.state_dir), stack="acm-nginx")
    [host] = report.hosts
    got = {c.name: c for c in host.checks}
    for name in ("boot", "enclaves", "parent-denied", "nsm-parent-refused", "https",
                 "key-not-on-parent", "debug-denied", "other-image-denied"):  # fmt: skip
        assert got[name].ok and got[name].applies, (name, report.table())
    assert "KMS: AccessDeniedException for" in got["debug-denied"].detail, report.table()
    assert "(positive control)" in got["other-image-denied"].detail, report.table()
    _wait("nginx serving after verify's probes", lambda: _serves(w, chain_pem), 120, w.logs)


def _since(w: World, mark: int) -> str:
    return w.journal()[mark:]


def _wait_journal(w: World, mark: int, text: str, timeout: float = 120) -> str:
    return _wait(f"journal line {text!r}", lambda: text in _since(w, mark) and _since(w, mark),
                 timeout, w.logs)  # fmt: skip


def _restart_agent(w: World) -> int:
    mark = len(w.journal())
    out = w.sh(f"systemctl restart {AGENT}")
    assert out.returncode == 0, out.stderr
    return mark


def test_a_broken_acm_yaml_is_one_line_in_the_journal(world: World) -> None:
    w = world
    w.sh("cp /etc/nitro_enclaves/acm.yaml /root/acm.yaml.good")
    w.sh("sed -i 's/cpu_count: 2/cpu_count: two/' /etc/nitro_enclaves/acm.yaml")
    mark = _restart_agent(w)
    new = _wait_journal(w, mark, "Error: ConfigError:")
    line = next(x for x in new.splitlines() if "Error: ConfigError:" in x)
    assert line.endswith(
        "Error: ConfigError: /etc/nitro_enclaves/acm.yaml: enclave.cpu_count: invalid type: "
        'string "two", expected u64'
    ), line
    assert "Traceback" not in new, new
    assert "Main process exited, code=exited, status=1/FAILURE" in _wait_journal(
        w, mark, "status=1/FAILURE"
    )
    w.sh("cp /root/acm.yaml.good /etc/nitro_enclaves/acm.yaml")
    _restart_agent(w)
    _wait("nginx serving again", lambda: _serves(w, _acm_pem(w)[1]), 120, w.logs)


def test_a_killed_acm_enclave_is_detected_and_recovered(world: World) -> None:
    w = world
    chain_pem = _acm_pem(w)[1]
    _wait("nginx serving", lambda: _serves(w, chain_pem), 120, w.logs)
    listed = hooks.host_enclaves(w.layout)  # earlier agents' enclaves may show TERMINATED
    first = [e for e in listed if e["State"] == "RUNNING"]
    assert len(first) == 1, listed
    mark = len(w.journal())
    out = w.sh(f"nitro-cli terminate-enclave --enclave-id {first[0]['EnclaveID']}")
    assert out.returncode == 0, out.stderr
    _wait_journal(w, mark, "Error: AgentError: EnclaveDied", 60)

    def recovered() -> bool:
        running = [e for e in hooks.host_enclaves(w.layout) if e["State"] == "RUNNING"]
        fresh = [e for e in running if e["EnclaveID"] != first[0]["EnclaveID"]]
        return len(running) == 1 and bool(fresh) and _serves(w, chain_pem)

    _wait("a new ACM enclave and nginx serving through it", recovered, 180, w.logs)
    assert "Syncing token nginx-acm-token" in _since(w, mark)
    before = _signatures(w)
    _handshake(w.https_port(), chain_pem)
    assert _signatures(w) >= before + 1


GRANTS = {
    # Sid of the template's statement -> what the agent's journal says without it
    "GetCertificate": "when calling the HeadObject operation",
    "DecryptKey": "Attestation failed for new token nginx-acm-token.",
    "GetRole": "Cannot fetch IAM role arn using the AWS CLI iam get-role command",
}


@contextlib.contextmanager
def _without(w: World, sid: str) -> Iterator[None]:
    iam = w.ep.client("iam")
    name = "acm-for-nitro-enclaves"
    doc = iam.get_role_policy(RoleName=w.role_name, PolicyName=name)["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    cut = {**doc, "Statement": [s for s in doc["Statement"] if s.get("Sid") != sid]}
    assert len(cut["Statement"]) == len(doc["Statement"]) - 1
    iam.put_role_policy(RoleName=w.role_name, PolicyName=name, PolicyDocument=json.dumps(cut))
    try:
        yield
    finally:
        iam.put_role_policy(RoleName=w.role_name, PolicyName=name, PolicyDocument=json.dumps(doc))


@pytest.mark.parametrize("sid", list(GRANTS))
def test_a_missing_grant_leaves_nginx_without_a_key(world: World, sid: str) -> None:
    w = world
    w.sh(f"systemctl stop nginx; rm -f {STANZA}")
    with _without(w, sid):
        mark = _restart_agent(w)
        new = _wait_journal(w, mark, GRANTS[sid])
        if sid == "GetRole":  # the fallback ARN drops the role's path: the object is not found
            new = _wait_journal(w, mark, "Error creating managed token: KeyMaterialDbFetchError")
            assert "when calling the GetRole operation" in new, new
        time.sleep(3)  # what the agent would do next, it has done by now
        assert w.sh(f"test -e {STANZA}").returncode != 0, _since(w, mark)
        assert w.sh("systemctl is-active nginx").stdout.strip() != "active", _since(w, mark)
        assert not _serves(w, _acm_pem(w)[1])
    _restart_agent(w)
    _wait("nginx serving with the grant back", lambda: _serves(w, _acm_pem(w)[1]), 120, w.logs)


def _issue(ca_key: Any, ca: x509.Certificate, serial: int) -> tuple[str, str]:
    """(leaf PEM, PKCS#8 key PEM) for DOMAIN under `ca`."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return leaf.public_bytes(serialization.Encoding.PEM).decode(), pem.decode()


@dataclass
class S3Source:
    """A key-material object the account writes (the agent's S3 source) under a key of the
    account whose policy releases Decrypt to the role from the images of `pcr0s` only."""

    key_arn: str
    ca_pem: str
    publish: Callable[[int], str]


def _s3_source(w: World, pcr0s: list[str]) -> S3Source:
    import base64
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    account = w.ep.client("sts").get_caller_identity()["Account"]
    role_arn = w.ep.client("iam").get_role(RoleName=w.role_name)["Role"]["Arn"]
    kms, s3 = w.ep.client("kms"), w.ep.client("s3")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Principal": {"AWS": role_arn},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0s}
                },
            },
        ],
    }
    key_id = kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    bucket, obj = "acm-renewal-material", "nginx/key-material.json"
    with contextlib.suppress(Exception):  # made by an earlier test of this module
        s3.create_bucket(Bucket=bucket)
    w.ep.client("iam").put_role_policy(
        RoleName=w.role_name,
        PolicyName="s3-key-material",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{bucket}/*",
                    },
                    {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"},
                ],
            }
        ),
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renewal test CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()

    def publish(serial: int) -> str:
        leaf, key_pem = _issue(ca_key, ca, serial)
        blob = kms.encrypt(KeyId=key_id, Plaintext=key_pem.encode())["CiphertextBlob"]
        body = {
            "certificate": leaf,
            "certificateChain": ca_pem,
            "encryptedPrivateKey": base64.b64encode(blob).decode(),
            "encryptionMethod": "RSAES_OAEP_SHA_256",
        }
        s3.put_object(Bucket=bucket, Key=obj, Body=json.dumps(body).encode())
        return leaf

    publish(1001)
    w.sh("cp /etc/nitro_enclaves/acm.yaml /root/acm.yaml.acm")
    w.sh(
        "sed -i -e 's!^      Acm:!      S3:!' -e 's!^        certificate_arn: .*!        uri: "
        f"s3://{bucket}/{obj}!' -e 's!sync_interval_secs: 600!sync_interval_secs: 5!' "
        "/etc/nitro_enclaves/acm.yaml"
    )
    return S3Source(key_id, ca_pem, publish)


def _back_to_acm(w: World) -> None:
    """acm.yaml as the template wrote it, and the agent serving with it again (an agent
    stopped while it boots its enclave leaves that enclave behind: the next test's restart
    must not come that early)."""
    w.sh("cp /root/acm.yaml.acm /etc/nitro_enclaves/acm.yaml")
    _restart_agent(w)
    _wait("nginx serving the ACM certificate again", lambda: _serves(w, _acm_pem(w)[1]), 120,
          w.logs)  # fmt: skip


def test_a_renewed_certificate_is_provisioned_and_served_after_the_sync(world: World) -> None:
    """The agent's S3 source (a key-material object the account writes, its key released
    only to the ACM image): a new object is noticed at the next sync (DescribeToken, changed
    object -> UpdateToken), the stanza and chain are rewritten and nginx restarts."""
    from local_backend.acm_enclave import p11ne_measurements

    w = world
    src = _s3_source(w, [p11ne_measurements().hex(0)])

    def served_serial() -> int | None:
        with contextlib.suppress(OSError, ssl.SSLError, AssertionError, StopIteration):
            leaf, _ = _handshake(w.https_port(), src.ca_pem)
            return x509.load_der_x509_certificate(leaf).serial_number
        return None

    try:
        mark = _restart_agent(w)
        _wait("the S3 source's first certificate", lambda: served_serial() == 1001, 120, w.logs)
        stanza = w.sh(f"cat {STANZA}").stdout
        assert "object=s3-key;type=private" in stanza, stanza
        src.publish(1002)
        _wait("the renewed certificate after a sync", lambda: served_serial() == 1002, 90, w.logs)
        new = _since(w, mark)
        assert "DB change detected. Updating token: nginx-acm-token." in new, new
        assert "Restarting nginx.service." in new, new
        before = _signatures(w)
        _handshake(w.https_port(), src.ca_pem)
        assert _signatures(w) >= before + 1
    finally:
        _back_to_acm(w)


def test_acm_probes_fail_when_the_key_also_releases_to_debug_or_another_image(
    world: World, tmp_path: Path
) -> None:
    """verify's debug-denied and other-image-denied for an ACM host, with the subject broken:
    the token's key (an S3 source, so its policy is the account's to break) releases to the
    ACM image and also to PCR0 zero (any debug-mode enclave) and to the one-byte variant
    verify boots. Both probes must then fail, naming the key given out; the positive control
    (the real image) still gets it."""
    from enclavekit import eif
    from local_backend import verify
    from local_backend.acm_enclave import p11ne_image, p11ne_measurements

    w = world
    variant = verify.variant_image(p11ne_image()[0], tmp_path / "variant.eif")
    pcr0s = [p11ne_measurements().hex(0), "00" * 48, eif.read_eif(variant).measurements.hex(0)]
    _s3_source(w, pcr0s)
    try:
        h = verify.UserDataHost(w.layout, Path(w.ep.state_dir))
        [token] = [t for t in acm_config_tokens(w) if t.label == LABEL]
        checks = {c.name: c for c in verify.check_acm_probes(h, token)}
    finally:
        _back_to_acm(w)
    for name in ("debug-denied", "other-image-denied"):
        c = checks[name]
        print(f"\n{name} with the key released to it: {c.detail}")
        assert not c.ok, c.detail
        assert "was given the certificate's key: AddToken answered Ok" in c.detail, c.detail


def acm_config_tokens(w: World) -> list[Any]:
    from local_backend.host import acm_config

    return list(acm_config.parse(w.sh("cat /etc/nitro_enclaves/acm.yaml").stdout).tokens)


def _renewal(w: World) -> Any:
    from local_backend import verify

    report = verify.verify(Path(w.ep.state_dir), stack="acm-nginx", checks=["renewal"])
    [host] = report.hosts
    return next(c for c in host.checks if c.name == "renewal")


def test_renewal_needs_the_admin_token(world: World) -> None:
    """ACM's renewal on the endpoint (verify's probe) is no API of AWS: without the state
    dir's admin token it is refused, as the key search is."""
    import urllib.error
    import urllib.request

    from local_backend import server

    body = json.dumps(
        {"certificate_arn": world.certificate_arn, "account_id": "x", "region": "us-east-1"}
    ).encode()
    for headers in ({}, {server.ADMIN_TOKEN_HEADER: "0" * 64}):
        r = urllib.request.Request(
            world.ep.url + server.RENEW_PATH, data=body, method="POST", headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(r, timeout=30)
        assert err.value.code == 403 and b"AccessDenied" in err.value.read()


def test_renewal_probe_counts_the_requests_the_agents_nginx_restart_drops(world: World) -> None:
    """verify's opt-in `renewal` check on the ACM host: ACM renews the certificate (new
    certificate and key, same ARN, the association's object re-published); with acm.yaml's
    sync_interval_secs at 5 the agent syncs, UpdateToken, and restarts nginx as AWS's agent
    does (SIGWINCH, reload_wait_ms, systemctl restart). The new certificate is served, and
    the requests made in that window fail: the check says so and fails, truthfully."""
    w = world
    chain_pem = _acm_pem(w)[1]
    _wait("nginx serving", lambda: _serves(w, chain_pem), 120, w.logs)  # the agent is steady
    w.sh("cp /etc/nitro_enclaves/acm.yaml /root/acm.yaml.acm")
    w.sh("sed -i 's!sync_interval_secs: 600!sync_interval_secs: 5!' /etc/nitro_enclaves/acm.yaml")
    try:
        _restart_agent(w)
        _wait("nginx serving", lambda: _serves(w, chain_pem), 120, w.logs)
        before = _acm_pem(w)[0]
        check = _renewal(w)
        print(f"\nrenewal with AWS's agent: {check.detail}")
        assert _acm_pem(w)[0] != before  # renewed: a new certificate under the same ARN
        assert not check.ok, check.detail
        assert "HTTPS requests failed while the agent put the renewed certificate" in check.detail
        assert "the new certificate was served from" in check.detail, check.detail
        assert "Restarting nginx.service." in check.detail, check.detail
        # The agent does not update (its S3 grant is gone, so its sync cannot fetch the
        # re-published object): the old certificate stays, the check times out saying why.
        with _without(w, "GetCertificate"):
            stale = _renewal(w)
        print(f"renewal with an agent that cannot update: {stale.detail}\n{w.journal()[-1500:]}")
        assert not stale.ok
        assert stale.detail.startswith("the renewed certificate was not served within 65 s"), (
            stale.detail
        )
        assert "sync_interval_secs 5" in stale.detail, stale.detail
    finally:
        _back_to_acm(w)
