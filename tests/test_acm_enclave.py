"""The local ACM for Nitro Enclaves image (p11ne.eif) with every real part around it.

One endpoint (moto + our extensions, TLS front), ACM certificates (RSA and EC) associated with
an instance role, the real image booted in the enclave emulator, the parent's vsock-proxy to
KMS, and on the parent side OpenSSL with libp11 and p11-kit's client module using AWS's key URI
unchanged. Proved: the image builds byte for byte the same; AddToken with the association's
S3 object decrypts the key in the enclave (attested KMS Decrypt); the parent signs through
p11-kit with RSA PKCS#1, RSA-PSS and ECDSA and the signatures verify with the certificates'
public keys; the token counts them; the key is absent from the parent side and the endpoint's
state and present in the enclave; a user image and a debug-mode p11ne enclave are denied
(AccessDeniedException, KmsDecryptFailed); malformed RPC requests get AWS's answers.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from enclave_app.attester import Attester
from enclave_app.keys import RecipientKey
from enclave_app.kms import AttestedKms, KmsDenied
from enclavekit.eif import read_eif
from enclavekit.localenv import LOCAL_ACCOUNT, LOCAL_REGION
from enclavekit.pcr import Measurements
from enclavekit.provisioning import Credentials
from enclavekit.transport import SocketNsm
from local_backend import pytest_plugin as plugin
from local_backend import server, verify
from local_backend.acm_enclave import (
    KEY_LABEL,
    p11kit_address,
    p11ne_image,
    p11ne_measurements,
    rpc_connect,
    wait_ready,
)
from local_backend.acm_enclave.p11ne import rpc
from local_backend.emulator.monitor import make_signer
from local_backend.emulator.nsm_server import BootMeasurements, NsmDevice, NsmServer
from local_backend.emulator.runtime import EnclaveManager
from local_backend.emulator.vsock_proxy import VsockProxy
from local_backend.moto_ext.identity import (
    EC2_SERVICE_ACCESS_KEY_ID,
    EC2_SERVICE_SECRET_ACCESS_KEY,
)
from local_backend.system_packages import SystemRoot, system_root

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the enclave emulator needs root")
INSTANCE_ID = "i-0a0c0e0123456789a"
PIN = "0123456789abcdef"
KMS_HOST = f"kms.{LOCAL_REGION}.amazonaws.com"


def test_image_builds_reproducibly_and_is_measured(tmp_path: Path) -> None:
    eif1, json1 = p11ne_image(tmp_path / "a")
    eif2, json2 = p11ne_image(tmp_path / "b")
    assert eif1.read_bytes() == eif2.read_bytes()
    measured = json.loads(json1.read_text())
    assert set(measured) == {"Measurements"}  # nitro-cli build-enclave's JSON
    assert measured == json.loads(json2.read_text())
    image = read_eif(eif1, verify_crc=True)
    assert image.measurements == Measurements.from_nitro_cli_json(measured)
    assert image.measurements == p11ne_measurements()
    assert not image.measurements.is_debug
    # the native parts are in the measured ramdisk
    ramdisk = image.ramdisks[1]
    for part in (b"libp11ne.so", b"libsofthsm2.so", b"p11-kit-server", b"p11-kit-remote"):
        assert part in ramdisk
    assert p11kit_address(tmp_path, 16) == f"unix:path={tmp_path}/vsock/16/9999"


def test_rpc_parsing_follows_vtok_rpc() -> None:
    creds = {"region": "r", "access_key_id": "a", "secret_access_key": "s", "session_token": "t"}
    key = {"encrypted_pem_b64": "", "id": 1, "label": "k"}
    add = {"AddToken": {"token": {"label": "l", "pin": "1234", "envelope_key": {"Kms": creds},
                                  "keys": [key]}}}  # fmt: skip
    parsed = rpc.parse_request(json.dumps(add).encode())
    assert parsed.call == "AddToken" and parsed.args["token"].keys[0].cert_pem is None
    assert parsed.to_json() == {
        "AddToken": {"token": {**add["AddToken"]["token"], "keys": [{**key, "cert_pem": None}]}}
    }
    assert rpc.parse_request(b'"DescribeDevice"').call == "DescribeDevice"
    for bad in (b"{", b'{"Nope": {}}', b'{"DescribeToken": {"label": "x"}}',
                b'{"AddToken": {"token": {"label": "l", "pin": "1234", "keys": []}}}'):  # fmt: skip
        with pytest.raises(rpc.ParseError):
            rpc.parse_request(bad)
    dup = json.loads(json.dumps(add))
    dup["AddToken"]["token"]["keys"] = [key, {**key, "label": "other"}]
    with pytest.raises(rpc.ApiError) as info:
        rpc.validate(rpc.parse_request(json.dumps(dup).encode()))
    assert info.value.value == {"InvalidArgs": {"DuplicateKeyId": 1}}


# ------------------------------------------------------------------------------- the world


@dataclass
class Cert:
    arn: str
    label: str
    certificate: x509.Certificate
    s3_object: dict[str, Any]


@dataclass
class World:
    endpoint: plugin.LocalEndpoint
    instance: Path
    role_arn: str
    creds: dict[str, str]
    certs: dict[str, Cert]
    system: SystemRoot
    eif: Path
    tmp: Path

    def envelope(self) -> rpc.EnvelopeKey:
        c = self.creds
        return rpc.EnvelopeKey(LOCAL_REGION, c["AccessKeyId"], c["SecretAccessKey"],
                               c["SessionToken"])  # fmt: skip

    def token(self, kind: str) -> rpc.Token:
        cert = self.certs[kind]
        key = rpc.PrivateKey(
            cert.s3_object["encryptedPrivateKey"],
            1,
            KEY_LABEL,
            cert.s3_object["certificate"] + cert.s3_object["certificateChain"],
        )
        return rpc.Token(cert.label, PIN, self.envelope(), (key,))


def _ec_certificate(domain: str) -> dict[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return {
        "Certificate": cert.public_bytes(serialization.Encoding.PEM),
        "PrivateKey": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }


def _role_creds(endpoint: plugin.LocalEndpoint, role_arn: str) -> dict[str, str]:
    """The role's credentials as IMDS hands them out (EC2 assumes the role)."""
    sts = endpoint.client(
        "sts",
        aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
    )
    return sts.assume_role(RoleArn=role_arn, RoleSessionName=INSTANCE_ID)["Credentials"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("acm-enclave")
    endpoint = plugin.start_endpoint(tmp / "endpoint")
    instance = tmp / "instance"
    proxy = None
    try:
        iam, acm, ec2 = (endpoint.client(s) for s in ("iam", "acm", "ec2"))
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                           "Action": "sts:AssumeRole"}],
        }  # fmt: skip
        role_arn = iam.create_role(RoleName="acm-host", AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"
        ]["Arn"]
        certs: dict[str, Cert] = {}
        statements = [{"Effect": "Allow", "Action": "iam:GetRole", "Resource": role_arn}]
        for kind in ("rsa", "ec"):
            if kind == "rsa":  # issued by ACM (the local CA)
                arn = acm.request_certificate(DomainName="rsa.acm.example.test")["CertificateArn"]
            else:  # imported into ACM: an EC key of our own
                arn = acm.import_certificate(**_ec_certificate("ec.acm.example.test"))[
                    "CertificateArn"
                ]
            assoc = ec2.associate_enclave_certificate_iam_role(CertificateArn=arn, RoleArn=role_arn)
            bucket, key = assoc["CertificateS3BucketName"], assoc["CertificateS3ObjectKey"]
            statements += [
                {"Effect": "Allow", "Action": "s3:GetObject",
                 "Resource": f"arn:aws:s3:::{bucket}/*"},
                {"Effect": "Allow", "Action": "kms:Decrypt",
                 "Resource": f"arn:aws:kms:{LOCAL_REGION}:*:key/{assoc['EncryptionKmsKeyId']}"},
            ]  # fmt: skip
            certs[kind] = Cert(arn, f"acm-{kind}", None, {"bucket": bucket, "key": key})  # type: ignore[arg-type]
        iam.put_role_policy(
            RoleName="acm-host",
            PolicyName="acm",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
        )
        creds = _role_creds(endpoint, role_arn)
        s3 = endpoint.client(
            "s3",
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        for cert in certs.values():
            where = cert.s3_object
            obj = json.loads(s3.get_object(Bucket=where["bucket"], Key=where["key"])["Body"].read())
            cert.s3_object = obj
            cert.certificate = x509.load_pem_x509_certificate(obj["certificate"].encode())
        # The emulated parent: its enclaves attest with the endpoint's PKI and trust its TLS CA
        # (as verify's probe enclaves do), and its vsock-proxy carries KMS TLS on (3, 8000).
        instance.mkdir()
        (instance / "pki").symlink_to(endpoint.state_dir / "pki", target_is_directory=True)
        info = server.read_endpoint(endpoint.state_dir)
        allowlist = instance / "vsock-proxy.yaml"
        allowlist.write_text(f"allowlist:\n- {{address: {KMS_HOST}, port: 443}}\n")
        proxy = VsockProxy.for_state_dir(
            instance, 8000, KMS_HOST, 443, config=allowlist, endpoint=endpoint.url,
            tls_endpoint=info.tls_endpoint if info else None,
        ).start()  # fmt: skip
        eif, _ = p11ne_image()
        yield World(endpoint, instance, role_arn, creds, certs, system_root(), eif, tmp)
    finally:
        with contextlib.suppress(Exception):
            EnclaveManager(instance).terminate_all()
        if proxy is not None:
            proxy.stop()
        plugin.stop_endpoint(endpoint)


@contextlib.contextmanager
def _enclave(world: World, *, debug: bool = False) -> Iterator[dict[str, Any]]:
    manager = EnclaveManager(world.instance)
    enclave = manager.run_enclave(
        world.eif, 2, 256, debug_mode=debug, parent_role_arn=world.role_arn,
        parent_instance_id=INSTANCE_ID,
    )  # fmt: skip
    try:
        wait_ready(world.instance, enclave["EnclaveCID"], timeout=30)
        yield enclave
    finally:
        manager.terminate(enclave["EnclaveID"])


def _call(world: World, cid: int, call: str, **args: Any) -> Any:
    with rpc_connect(world.instance, cid) as sock:
        sock.settimeout(60)
        return rpc.call(sock, rpc.Request(call, args))


def _raw(world: World, cid: int, data: bytes) -> bytes:
    """What the RPC server answers to raw bytes (b"" = it closed without an answer)."""
    with rpc_connect(world.instance, cid) as sock:
        sock.settimeout(10)
        sock.sendall(data)
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                out += chunk
        return out


def _sign(world: World, cid: int, label: str, data: bytes, *sigopts: str) -> bytes:
    """OpenSSL + libp11 + p11-kit's client on the parent, with AWS's URI unchanged."""
    w = world.tmp
    (w / "openssl.cnf").write_text(world.system.openssl_conf(world.system.p11kit_client))
    (w / "data.bin").write_bytes(data)
    uri = (
        f"pkcs11:model=p11ne-token;manufacturer=Amazon;token={label};id=%01;"
        f"object={KEY_LABEL};type=private?pin-value={PIN}"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENSSL_CONF": str(w / "openssl.cnf"),
        "P11_KIT_SERVER_ADDRESS": p11kit_address(world.instance, cid),
    }
    opts = [a for o in sigopts for a in ("-sigopt", o)]
    run = subprocess.run(
        ["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign", uri,
         *opts, "-out", str(w / "sig.bin"), str(w / "data.bin")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return (w / "sig.bin").read_bytes()


CKF_WRITE_PROTECTED, CKF_LOGIN_REQUIRED, CKR_TOKEN_WRITE_PROTECTED = 0x2, 0x4, 0xE2


def _token_as_the_parent_sees_it(world: World, cid: int, label: str) -> dict[str, Any]:
    """C_GetTokenInfo of the token `label` and the answer to a read-write C_OpenSession,
    through p11-kit's client module (in a child process: the module reads its address from
    the environment at C_Initialize)."""
    script = f"""
import ctypes, json
ul, vp = ctypes.c_ulong, ctypes.c_void_p
class Fl(ctypes.Structure):
    _fields_ = [("v", ctypes.c_ubyte * 2)] + [(f"f{{i}}", vp) for i in range(68)]
lib = ctypes.CDLL({str(world.system.p11kit_client)!r})
fl = ctypes.POINTER(Fl)()
assert lib.C_GetFunctionList(ctypes.byref(fl)) == 0
fn = lambda i, *a: ctypes.CFUNCTYPE(ul, *a)(getattr(fl.contents, f"f{{i}}"))
assert fn(0, vp)(None) == 0
n = ul(0)
assert fn(4, ctypes.c_ubyte, vp, ctypes.POINTER(ul))(1, None, ctypes.byref(n)) == 0
slots = (ul * n.value)()
assert fn(4, ctypes.c_ubyte, vp, ctypes.POINTER(ul))(1, slots, ctypes.byref(n)) == 0
for slot in slots:
    info = ctypes.create_string_buffer(256)
    assert fn(6, ul, vp)(slot, info) == 0
    raw = info.raw
    if raw[:32].decode().rstrip() != {label!r}:
        continue
    h = ul(0)
    rv = fn(12, ul, ul, vp, vp, ctypes.POINTER(ul))(slot, 0x4 | 0x2, None, None, ctypes.byref(h))
    print(json.dumps({{"manufacturer": raw[32:64].decode().rstrip(),
                      "model": raw[64:80].decode().rstrip(),
                      "serial": raw[80:96].decode().rstrip(),
                      "flags": int.from_bytes(raw[96:104], "little"), "rw_session": rv}}))
fn(1, vp)(None)
"""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "P11_KIT_SERVER_ADDRESS": p11kit_address(world.instance, cid)}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and run.stdout.strip(), run.stdout + run.stderr
    return json.loads(run.stdout)


CKR_ATTRIBUTE_SENSITIVE = 0x11
# CKA_VALUE (EC), CKA_PRIVATE_EXPONENT, CKA_PRIME_1 (RSA); CKA_SENSITIVE; CKA_EXTRACTABLE
SECRET_ATTRIBUTES = (0x11, 0x123, 0x124)
CKA_SENSITIVE, CKA_EXTRACTABLE = 0x103, 0x162


def _private_key_as_the_parent_asks(world: World, cid: int, label: str) -> dict[str, int]:
    """Logged in with the PIN (the parent knows it: it chose it), C_GetAttributeValue of the
    private key's secret parts through p11-kit: the CK_RV of each, and its two flags."""
    script = f"""
import ctypes, json
ul, vp = ctypes.c_ulong, ctypes.c_void_p
class Fl(ctypes.Structure):
    _fields_ = [("v", ctypes.c_ubyte * 2)] + [(f"f{{i}}", vp) for i in range(68)]
class Attr(ctypes.Structure):
    _fields_ = [("type", ul), ("value", vp), ("len", ul)]
lib = ctypes.CDLL({str(world.system.p11kit_client)!r})
fl = ctypes.POINTER(Fl)()
assert lib.C_GetFunctionList(ctypes.byref(fl)) == 0
fn = lambda i, *a: ctypes.CFUNCTYPE(ul, *a)(getattr(fl.contents, f"f{{i}}"))
assert fn(0, vp)(None) == 0
n = ul(0)
assert fn(4, ctypes.c_ubyte, vp, ctypes.POINTER(ul))(1, None, ctypes.byref(n)) == 0
slots = (ul * n.value)()
assert fn(4, ctypes.c_ubyte, vp, ctypes.POINTER(ul))(1, slots, ctypes.byref(n)) == 0
out = {{}}
for slot in slots:
    info = ctypes.create_string_buffer(256)
    assert fn(6, ul, vp)(slot, info) == 0
    if info.raw[:32].decode().rstrip() != {label!r}:
        continue
    h = ul(0)
    assert fn(12, ul, ul, vp, vp, ctypes.POINTER(ul))(slot, 0x4, None, None, ctypes.byref(h)) == 0
    pin = {PIN!r}.encode()
    assert fn(18, ul, ul, ctypes.c_char_p, ul)(h, 1, pin, len(pin)) == 0
    cls = ul(3)  # CKO_PRIVATE_KEY
    tmpl = Attr(0, ctypes.cast(ctypes.byref(cls), vp), ctypes.sizeof(cls))
    assert fn(26, ul, vp, ul)(h, ctypes.byref(tmpl), 1) == 0
    obj, count = ul(0), ul(0)
    assert fn(27, ul, vp, ul, ctypes.POINTER(ul))(h, ctypes.byref(obj), 1, ctypes.byref(count)) == 0
    fn(28, ul)(h)
    assert count.value == 1
    getattr_ = fn(24, ul, ul, vp, ul)
    for t in {SECRET_ATTRIBUTES!r}:
        buf = ctypes.create_string_buffer(1024)
        a = Attr(t, ctypes.cast(buf, vp), 1024)
        out[hex(t)] = getattr_(h, obj.value, ctypes.byref(a), 1)
    for t in ({CKA_SENSITIVE}, {CKA_EXTRACTABLE}):
        b = ctypes.c_ubyte(9)
        a = Attr(t, ctypes.cast(ctypes.byref(b), vp), 1)
        assert getattr_(h, obj.value, ctypes.byref(a), 1) == 0
        out["flag" + hex(t)] = b.value
print(json.dumps(out))
fn(1, vp)(None)
"""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "P11_KIT_SERVER_ADDRESS": p11kit_address(world.instance, cid)}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and run.stdout.strip(), run.stdout + run.stderr
    return json.loads(run.stdout)


def _keyscan(world: World, arn: str, *, paths: list[str], pids: list[int]) -> dict[str, Any]:
    """The endpoint (which plays ACM and holds the key) searches for it; verify's request."""
    req = {"certificate_arn": arn, "account_id": LOCAL_ACCOUNT, "region": LOCAL_REGION,
           "paths": paths, "pids": pids}  # fmt: skip
    return verify.endpoint_keyscan(world.endpoint.url, req, world.endpoint.state_dir)


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


# ------------------------------------------------------------------------------- the tests


@pytest.mark.slow
def test_token_in_the_enclave_signs_for_the_parent(world: World) -> None:
    with _enclave(world) as enclave:
        cid = enclave["EnclaveCID"]
        assert _call(world, cid, "DescribeDevice") == {
            "Ok": {"DeviceDescription": {"free_slot_count": 128, "tokens": []}}
        }
        for kind in ("rsa", "ec"):
            assert _call(world, cid, "AddToken", token=world.token(kind)) == {"Ok": "None"}
        described = _call(world, cid, "DescribeToken", label="acm-rsa", pin=PIN)["Ok"]
        desc = described["TokenDescription"]
        assert desc["slot_id"] == 0 and desc["signatures"] == 0
        assert 0 < desc["ttl_secs"] <= rpc.TOKEN_EXPIRY_SECS
        assert desc["keys"] == [
            {
                "label": KEY_LABEL,
                "id": 1,
                "uri": "pkcs11:model=p11ne-token;manufacturer=Amazon;serial=EVT00;"
                "token=acm-rsa;id=%01;object=acm-key;type=private",
            }
        ]
        # RSA PKCS#1 v1.5 and PSS, ECDSA: signed in the enclave, verified with the certificate
        data = os.urandom(64)
        rsa_pub = world.certs["rsa"].certificate.public_key()
        sig = _sign(world, cid, "acm-rsa", data)
        rsa_pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        pss = _sign(world, cid, "acm-rsa", data, "rsa_padding_mode:pss", "rsa_pss_saltlen:32")
        rsa_pub.verify(pss, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
        with pytest.raises(InvalidSignature):
            rsa_pub.verify(sig, data + b"x", padding.PKCS1v15(), hashes.SHA256())
        ec_sig = _sign(world, cid, "acm-ec", data)
        world.certs["ec"].certificate.public_key().verify(ec_sig, data, ec.ECDSA(hashes.SHA256()))
        count = {
            label: _call(world, cid, "DescribeToken", label=label, pin=PIN)["Ok"][
                "TokenDescription"
            ]["signatures"]
            for label in ("acm-rsa", "acm-ec")
        }
        assert count == {"acm-rsa": 2, "acm-ec": 1}

        # Where is the key? Not on the parent side or in the endpoint's state; in the enclave.
        record = EnclaveManager(world.instance).record(enclave["EnclaveID"])
        enclave_pids = _tree(record["EnclavePID"])
        parent_pids = [os.getpid(), record["ProcessID"]]  # this test (proxy, client), monitor
        s3_copy = world.tmp / "s3-object.json"
        s3_copy.write_text(json.dumps(world.certs["rsa"].s3_object))
        result = _keyscan(
            world,
            world.certs["rsa"].arn,
            paths=[str(world.endpoint.state_dir), str(world.instance), str(s3_copy)],
            pids=[*parent_pids, *enclave_pids],
        )
        assert result["file_hits"] == [] and result["files_read"] > 10
        for pid in parent_pids:
            assert result["processes"][str(pid)]["hits"] == [], pid
        found = [h for p in enclave_pids for h in result["processes"][str(p)].get("hits", [])]
        assert found, result["processes"]  # positive control: the search does find it

        # what a PKCS#11 client on the parent sees: AWS's token, read-only
        info = _token_as_the_parent_sees_it(world, cid, "acm-rsa")
        assert info["model"] == "p11ne-token" and info["manufacturer"] == "Amazon"
        assert info["serial"] == "EVT00"
        assert info["flags"] & CKF_WRITE_PROTECTED and info["flags"] & CKF_LOGIN_REQUIRED
        assert info["rw_session"] == CKR_TOKEN_WRITE_PROTECTED
        # ... whose key, PIN and all, never leaves: its secret parts are sensitive and it is
        # not extractable (SoftHSM refuses them; the read-only token refuses changing that)
        for label in ("acm-rsa", "acm-ec"):
            got = _private_key_as_the_parent_asks(world, cid, label)
            assert got.pop(hex(CKA_SENSITIVE).replace("0x", "flag0x")) == 1, label
            assert got.pop(hex(CKA_EXTRACTABLE).replace("0x", "flag0x")) == 0, label
            assert CKR_ATTRIBUTE_SENSITIVE in got.values(), (label, got)
            assert set(got.values()) <= {CKR_ATTRIBUTE_SENSITIVE, 0x12}, (label, got)

        # a removed token is gone from p11-kit's view too
        assert _call(world, cid, "RemoveToken", label="acm-ec", pin=PIN) == {"Ok": "None"}
        with pytest.raises(AssertionError, match="acm-ec|find|load"):
            _sign(world, cid, "acm-ec", data)
        tokens = _call(world, cid, "DescribeDevice")["Ok"]["DeviceDescription"]["tokens"]
        assert [t["label"] for t in tokens] == ["acm-rsa"]


@pytest.mark.slow
def test_rpc_errors_as_aws_shapes_them(world: World) -> None:
    with _enclave(world) as enclave:
        cid = enclave["EnclaveCID"]
        body = json.dumps("DescribeDevice").encode()
        good = (
            f"POST /rpc/v1 HTTP/1.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        answer = _raw(world, cid, good)
        assert answer.startswith(b"200 OK\r\nContent-Type: application/json\r\nContent-Length: ")
        # requests that do not parse get no answer at all (vtok_rpc's transport errors)
        assert _raw(world, cid, good.replace(b"/rpc/v1", b"/rpc/v2")) == b""
        assert _raw(world, cid, good.replace(b"POST", b"GET")) == b""
        assert _raw(world, cid, good.replace(b"Content-Type", b"X-Other")) == b""
        assert _raw(world, cid, good.replace(body, b'"Describe"')) == b""
        assert _call(world, cid, "DescribeToken", label="x", pin="12") == {
            "Err": {"InvalidArgs": "PinTooShort"}
        }
        assert _call(world, cid, "DescribeToken", label="x" * 33, pin="1234") == {
            "Err": {"InvalidArgs": "LabelTooLong"}
        }
        assert _call(world, cid, "DescribeToken", label="nope", pin="1234") == {
            "Err": "TokenNotFound"
        }
        assert _call(world, cid, "AddToken", token=world.token("rsa")) == {"Ok": "None"}
        assert _call(world, cid, "AddToken", token=world.token("rsa")) == {"Err": "TokenLabelInUse"}
        assert _call(world, cid, "DescribeToken", label="acm-rsa", pin="wrong-pin") == {
            "Err": "AccessDenied"
        }
        assert _call(
            world, cid, "RefreshToken", label="acm-rsa", pin=PIN, envelope_key=world.envelope()
        ) == {"Ok": "None"}
        bad = world.token("ec")
        broken = rpc.Token("broken", PIN, bad.envelope_key,
                           (rpc.PrivateKey("not base64!", 1, KEY_LABEL),))  # fmt: skip
        assert _call(world, cid, "AddToken", token=broken) == {"Err": "TokenKeyDecodingFailed"}
        # credentials of no one: KMS refuses, the enclave answers KmsDecryptFailed
        nobody = rpc.Token("nobody", PIN, rpc.EnvelopeKey(LOCAL_REGION, "AKIAEXAMPLE", "x", "y"),
                           bad.keys)  # fmt: skip
        assert _call(world, cid, "AddToken", token=nobody) == {"Err": "KmsDecryptFailed"}


@pytest.mark.slow
def test_debug_mode_p11ne_enclave_is_denied(world: World) -> None:
    with _enclave(world, debug=True) as enclave:
        assert _call(world, enclave["EnclaveCID"], "AddToken", token=world.token("rsa")) == {
            "Err": "KmsDecryptFailed"
        }
        console = b"".join(
            EnclaveManager(world.instance).console(enclave["EnclaveID"], disconnect_timeout=1)
        ).decode()
        assert "AccessDeniedException" in console


@pytest.mark.slow
def test_a_users_image_is_denied_the_acm_key(world: World, tmp_path: Path) -> None:
    """An attested enclave of another image (a user's, asking with the role's credentials)
    gets AccessDeniedException from KMS for the association's key; the same request attested
    with the p11ne image's PCRs gets the key (so the image alone makes the difference)."""
    user_image = Measurements(pcr0=bytes([7]) * 48, pcr1=bytes([2]) * 48, pcr2=bytes([3]) * 48)
    blob = base64.b64decode(world.certs["rsa"].s3_object["encryptedPrivateKey"])
    with _attested_kms(world, tmp_path / "user.sock", user_image) as kms:
        with pytest.raises(KmsDenied) as info:
            kms.decrypt(blob)
        assert info.value.code == "AccessDeniedException"
    with _attested_kms(world, tmp_path / "p11ne.sock", p11ne_measurements()) as kms:
        assert kms.decrypt(blob).startswith(b"-----BEGIN")
    # and the role on the parent, without attestation, gets nothing
    c = world.creds
    plain = world.endpoint.client(
        "kms",
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
    )
    with pytest.raises(ClientError) as denied:
        plain.decrypt(CiphertextBlob=blob)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"


@contextlib.contextmanager
def _attested_kms(world: World, nsm_path: Path, image: Measurements) -> Iterator[AttestedKms]:
    """enclave_app's attested KMS client over an emulated NSM that boots `image`."""
    module_id = f"{INSTANCE_ID}-enc0123456789abcdef"
    boot = BootMeasurements(
        measurements=image, role_arn=world.role_arn, instance_id=INSTANCE_ID, debug_mode=False
    )
    signer = make_signer(world.endpoint.state_dir, module_id)
    nsm = NsmServer(NsmDevice(module_id, boot, signer), nsm_path).start()
    c = world.creds
    kms = AttestedKms(
        attester=Attester(SocketNsm(nsm_path)),
        key=RecipientKey.generate(),
        region=LOCAL_REGION,
        credentials=Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]),
        endpoint_url=world.endpoint.url,
    )
    try:
        yield kms
    finally:
        kms.close()
        nsm.stop()
