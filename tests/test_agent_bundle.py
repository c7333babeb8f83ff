"""The parent agent bundle (enclavekit.agent_bundle) and how the host ships it (budget ~20 s).

- Byte-reproducible: a build in another process, from a copy of the sources with other mtimes,
  modes and umask, gives the same bytes.
- Exactly the agent's modules, verbatim; nothing that imports aws_cdk, moto, yaml or
  local_backend; non-pure core modules and other third-party imports refused.
- Run like the unit runs it (`python3 -I enclavekit-agent.pyz parent-agent ...`) in a fresh venv
  that holds boto3 and its dependencies only (no enclavekit, no cbor2/cryptography): --help, a
  bad config (one line, exit 2), and a full `--once` provisioning of an enclave peer on
  emulated vsock with credentials from an IMDSv2 stand-in on loopback.
- The synthesized host: the user data downloads the AgentBundle asset and checks the SHA-256 of
  exactly those bytes, the role may read it, boto3 pinned as in pyproject; the rendered
  download/check lines run for real (awscli against moto on loopback), and a tampered object
  is refused.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import boto3
import enclave_constructs as ek
import pytest
from aws_cdk import aws_ec2 as ec2
from enclave_constructs.spec import AGENT_BUNDLE, AgentSpec

from enclavekit import agent_bundle
from enclavekit import provisioning as prov
from enclavekit.errors import InvalidInput
from enclavekit.localenv import local_aws_env
from enclavekit.transport import EmulatedVsock

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "enclavekit"
ACCOUNT, REGION = "123456789012", "us-east-1"
ROLE = "EnclaveHostRole-TEST"
EXPECTED = (
    "__main__.py",
    "enclavekit/__init__.py",
    "enclavekit/agent.py",
    "enclavekit/cli/__init__.py",
    "enclavekit/cli/agent.py",
    "enclavekit/contract.py",
    "enclavekit/errors.py",
    "enclavekit/nsm.py",
    "enclavekit/provisioning.py",
    "enclavekit/transport.py",
)
FORBIDDEN = {"aws_cdk", "constructs", "enclave_constructs", "jsii", "local_backend", "moto", "yaml"}
# boto3 and its dependency tree: all the parent's venv holds
BOTO_TREE = ("boto3", "botocore", "dateutil", "jmespath", "s3transfer", "six", "urllib3")


@pytest.fixture(scope="module")
def bundle() -> agent_bundle.AgentBundle:
    return agent_bundle.build_agent_bundle()


@pytest.fixture(scope="module")
def bundle_file(bundle: agent_bundle.AgentBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle.write(tmp_path_factory.mktemp("bundle") / agent_bundle.BUNDLE_NAME)


# ------------------------------------------------------------------ contents, reproducibility
def _imports(source: bytes) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_bundle_holds_exactly_the_agent_modules(bundle: agent_bundle.AgentBundle) -> None:
    assert bundle.names == EXPECTED
    assert bundle.sha256 == hashlib.sha256(bundle.data).hexdigest()
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == list(EXPECTED)
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.external_attr >> 16 == 0o100644
            data = zf.read(info)
            assert not _imports(data) & FORBIDDEN, info.filename
            if info.filename.startswith("enclavekit/") and info.filename != (
                "enclavekit/__init__.py"
            ):
                # vendored verbatim: the code that runs is the code in the repository
                assert data == (CORE / info.filename.split("/", 1)[1]).read_bytes()
        main = zf.read("__main__.py").decode()
    assert 'main(groups=("enclavekit.cli.agent",))' in main


def _copy_sources(dest: Path, *, mtime: float, mode: int) -> Path:
    """A copy of the enclavekit package with other file times and modes."""
    pkg = dest / "enclavekit"
    shutil.copytree(CORE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for path in sorted(pkg.rglob("*"), reverse=True):
        if path.is_file():
            path.chmod(mode)
        os.utime(path, (mtime, mtime))
    return dest


_BUILD = """
import os, sys
os.umask(int(sys.argv[2], 8))
import enclavekit
from enclavekit.agent_bundle import build_agent_bundle
from enclavekit.errors import EnclaveKitError
assert enclavekit.__file__.startswith(sys.argv[3]), enclavekit.__file__
try:
    build_agent_bundle().write(sys.argv[1])
except EnclaveKitError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _build_from(src: Path, out: Path, umask: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(src)
    return subprocess.run(
        [sys.executable, "-c", _BUILD, str(out), f"{umask:o}", str(src)],
        env=env,
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bundle_is_byte_reproducible(bundle: agent_bundle.AgentBundle, tmp_path: Path) -> None:
    assert agent_bundle.build_agent_bundle() == bundle  # same process, again
    src = _copy_sources(tmp_path / "src", mtime=1_000_000_000, mode=0o600)
    out = tmp_path / "other.pyz"
    proc = _build_from(src, out, 0o077)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == bundle.data
    assert out.stat().st_mode & 0o077 == 0  # the umask did apply to that process


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        (
            "cli/agent.py",
            "from enclavekit import localenv",
            r"enclavekit/cli/agent\.py imports enclavekit\.localenv; expected only "
            r"enclavekit\.agent, enclavekit\.attestation",
        ),
        (
            "agent.py",
            "from enclavekit import toolchain",
            r"vendored module enclavekit\.agent imports enclavekit\.toolchain, which is not a pure "
            r"core module",
        ),
        (
            "provisioning.py",
            "import yaml",
            r"agent bundle module enclavekit/provisioning\.py imports yaml; expected only the "
            r"standard library, enclavekit and boto3, botocore, cbor2, cryptography",
        ),
        (
            "transport.py",
            "from . import errors",
            r"enclavekit/transport\.py: expected absolute imports only",
        ),
    ],
)
def test_bundle_refuses_what_the_parent_must_not_run(
    tmp_path: Path, file: str, line: str, message: str
) -> None:
    src = _copy_sources(tmp_path / "src", mtime=1_500_000_000, mode=0o644)
    target = src / "enclavekit" / file
    target.write_text(target.read_text() + f"\n\ndef _added():\n    {line}\n")
    proc = _build_from(src, tmp_path / "x.pyz", 0o022)
    assert proc.returncode == 2, proc.stderr
    [err] = proc.stderr.splitlines()
    assert re.search(message, err), err
    assert not (tmp_path / "x.pyz").exists()


# The parent's venv holds boto3 only: what the agent imports must load without cbor2 and
# cryptography (the pure modules needing them, nsm among them, are imported lazily).
_BOTO3_ONLY_IMPORT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cbor2", "cryptography"):
            raise ImportError(f"{name}: not in the parent's venv")
        return None
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
import importlib
for name in sys.argv[2:]:
    importlib.import_module(name)
print("ok")
"""
PARENT_SIDE_MODULES = (
    "enclavekit.transport",
    "enclavekit.provisioning",
    "enclavekit.agent",
    "enclavekit.cli.agent",
)


def _import_without_cbor2_cryptography(*modules: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", _BOTO3_ONLY_IMPORT, str(ROOT), *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_parent_side_modules_import_without_cbor2_or_cryptography() -> None:
    proc = _import_without_cbor2_cryptography(*PARENT_SIDE_MODULES)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    # the probe does block: a module that needs cbor2 at import time fails under it
    proc = _import_without_cbor2_cryptography("enclavekit.nsm")
    assert proc.returncode != 0 and "cbor2: not in the parent's venv" in proc.stderr


def test_runtime_requirements_pin_the_boto3_of_pyproject() -> None:
    pins = dict(p.split("==") for p in agent_bundle.runtime_requirements())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("boto3", "botocore"):
        [pinned] = [d.split("==")[1] for d in deps if d.startswith(f"{name}==")]
        assert pins[name] == pinned
    assert set(pins) == set(agent_bundle.RUNTIME_DISTRIBUTIONS)
    with pytest.raises(InvalidInput, match=r"agent bundle sha256: expected 64 lower-case hex"):
        AgentSpec(bucket="b", key="k", sha256="ABC", requirements=())
    with pytest.raises(InvalidInput, match=r"expected 'name==version', found 'boto3>=1'"):
        AgentSpec(bucket="b", key="k", sha256="0" * 64, requirements=("boto3>=1",))


# ------------------------------------------------------------------ run as the parent runs it
@pytest.fixture(scope="module")
def parent_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding boto3's dependency tree only (symlinked from this venv)."""
    venv = tmp_path_factory.mktemp("parent") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = venv / "bin" / "python3"
    site = Path(
        subprocess.run(
            [str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for name in BOTO_TREE:
        mod = importlib.import_module(name)
        src = Path(mod.__file__ or "")
        src = src.parent if src.name == "__init__.py" else src
        (site / src.name).symlink_to(src)
    probe = (
        "import importlib.util as u; "
        f"print([m for m in {sorted(FORBIDDEN | {'enclavekit', 'cbor2', 'cryptography'})!r}"
        " if u.find_spec(m)])"
    )
    out = subprocess.run(
        [str(python), "-I", "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        cwd=venv.parent,
    ).stdout
    assert out.strip() == "[]", f"the parent venv sees more than boto3: {out}"
    return python


def _run(
    python: Path, bundle_file: Path, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "PYTHONPATH": str(ROOT),
    }  # ignored: -I
    return subprocess.run(
        [str(python), "-I", str(bundle_file), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bundle_runs_with_boto3_only(
    parent_python: Path, bundle_file: Path, tmp_path: Path
) -> None:
    proc = _run(parent_python, bundle_file, "parent-agent", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: enclavekit parent-agent ")
    assert "--enclave-cid" in proc.stdout and "--imds-endpoint" in proc.stdout
    # only parent-agent: the rest of the CLI is not in the bundle
    proc = _run(parent_python, bundle_file, "up", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'up'" in proc.stderr
    (tmp_path / "host.json").write_text(json.dumps({"version": 2, "region": REGION}))
    proc = _run(
        parent_python, bundle_file, "parent-agent", "--config", "host.json", "--once", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "enclavekit: error: host config host.json.version: expected 1, found 2"
    ]
    # where the code came from: the bundle, not the repository (PYTHONPATH is ignored by -I)
    where = subprocess.run(
        [
            str(parent_python),
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(bundle_file)!r}); import enclavekit.agent, "
            "enclavekit.cli.agent, boto3; print(enclavekit.agent.__file__); print(boto3.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.splitlines()
    assert where[0] == f"{bundle_file}/enclavekit/agent.py"
    assert "site-packages/boto3" in where[1]


class _Imds:
    """The three IMDSv2 calls the agent makes, served on 127.0.0.1 (tokens required)."""

    def __init__(self) -> None:
        self.token = base64.b64encode(secrets.token_bytes(24)).decode()
        self.creds = {
            "Code": "Success",
            "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
            "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(200),
            "Expiration": "2099-01-01T00:00:00Z",
        }
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _send(self, status: int, body: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def do_PUT(self) -> None:
                ok = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "").isdigit()
                self._send(200, imds.token) if ok else self._send(400, "")

            def do_GET(self) -> None:
                base = "/latest/meta-data/iam/security-credentials/"
                if self.headers.get("X-aws-ec2-metadata-token") != imds.token:
                    self._send(401, "")
                elif self.path == base:
                    self._send(200, ROLE)
                elif self.path == base + ROLE:
                    self._send(200, json.dumps(imds.creds))
                else:
                    self._send(404, "")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _Enclave:
    """The enclave side of port 5005 on emulated vsock (CID 16): answers Provision."""

    def __init__(self, root: Path) -> None:
        self.listener = EmulatedVsock(root, 16).listen(prov.CONTROL_PORT)
        self.received: list[prov.Message] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    while True:
                        msg = prov.read_message(conn)
                        self.received.append(msg)
                        prov.write_message(conn, prov.Provisioned(state="ready", secrets=()))
                except (EOFError, OSError):
                    pass

    def close(self) -> None:
        import socket

        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


def test_bundle_provisions_an_enclave(
    parent_python: Path, bundle_file: Path, tmp_path: Path
) -> None:
    imds, enclave = _Imds(), _Enclave(tmp_path / "vsock")
    try:
        config = {
            "version": 1,
            "region": REGION,
            "enclave": {"cid": 16},
            "image": {"name": "enclave-app"},
            "secrets": [],
        }
        (tmp_path / "host.json").write_text(json.dumps(config))
        proc = _run(
            parent_python,
            bundle_file,
            "parent-agent",
            "--config",
            "host.json",
            "--enclave-cid",
            "16",
            "--once",
            "--wait",
            "10",
            "--imds-endpoint",
            imds.url,
            "--vsock-root",
            str(tmp_path / "vsock"),
            cwd=tmp_path,
        )
    finally:
        enclave.close()
        imds.close()
    assert proc.returncode == 0, proc.stderr
    assert "enclave provisioned: 0 secret(s) [], certificate: no" in proc.stderr
    [msg] = enclave.received
    assert isinstance(msg, prov.Provision)
    assert (msg.region, msg.credentials.access_key_id, msg.credentials.secret_access_key) == (
        REGION,
        imds.creds["AccessKeyId"],
        imds.creds["SecretAccessKey"],
    )
    assert imds.creds["SecretAccessKey"] not in proc.stderr
    assert imds.creds["Token"] not in proc.stderr


# ------------------------------------------------------------------ the synthesized host
@pytest.fixture(scope="module")
def synth() -> dict[str, Any]:
    app = cdk.App()
    stack = cdk.Stack(app, "Agent", env=cdk.Environment(account=ACCOUNT, region=REGION))
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        max_azs=1,
        nat_gateways=0,
        subnet_configuration=[
            ec2.SubnetConfiguration(
                name="iso", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24
            )
        ],
    )
    image = ek.EnclaveImage.from_measurements(
        pcr0="ab" * 48, pcr1="cd" * 48, pcr2="ef" * 48, name="app", host_path="/opt/app.eif"
    )
    ek.EnclaveHost(stack, "Host", vpc=vpc, image=image)
    ek.EnclaveHost(
        stack, "AcmHost", vpc=vpc, certificate=f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0a1b"
    )
    assembly = Path(app.synth().directory)
    template = json.loads((assembly / "Agent.template.json").read_text())
    return {"t": template, "dir": assembly}


def _resources(template: dict, kind: str, prefix: str) -> dict[str, dict]:
    return {
        k: v for k, v in template["Resources"].items() if v["Type"] == kind and k.startswith(prefix)
    }


def _user_data(template: dict, prefix: str) -> str:
    [inst] = _resources(template, "AWS::EC2::Instance", prefix).values()
    body = inst["Properties"]["UserData"]["Fn::Base64"]
    assert isinstance(body, str)
    return body


def test_user_data_fetches_and_checks_the_asset(
    synth: dict[str, Any], bundle: agent_bundle.AgentBundle
) -> None:
    ud = _user_data(synth["t"], "Host")
    assert "pip install --quiet 'enclavekit" not in ud and "'enclavekit==" not in ud
    m = re.search(r"^  's3://([^/]+)/([0-9a-f]{64})\.pyz' '(\S+)'$", ud, re.M)
    assert m is not None, ud
    bucket, asset_hash, part = m.groups()
    assert bucket == f"cdk-hnb659fds-assets-{ACCOUNT}-{REGION}"
    assert part == f"{AGENT_BUNDLE}.part"
    # the shipped file is this code's bundle, and that is the SHA-256 the host checks
    shipped = (synth["dir"] / f"asset.{asset_hash}.pyz").read_bytes()
    assert shipped == bundle.data
    assert f"echo '{bundle.sha256}  {part}' | sha256sum --check --strict --quiet" in ud
    pins = " ".join(f"'{p}'" for p in agent_bundle.runtime_requirements())
    assert pins in ud and "'boto3==" in pins
    [start] = re.findall(r"^ExecStart=/opt/enclavekit/venv/bin/python3 -I (.*)$", ud, re.M)
    assert start.split() == [
        AGENT_BUNDLE,
        "parent-agent",
        "--config",
        "/etc/enclavekit/host.json",
        "--enclave-cid",
        "16",
    ]
    steps = (
        "pip install",
        "aws s3 cp --only",
        "sha256sum",
        "ExecStart=/opt",
        "systemctl enable --now enclavekit-app.service",
    )
    order = [ud.index(s) for s in steps]
    assert order == sorted(order)
    assert len(ud.encode()) < 16384
    # an ACM-agent host runs no agent of ours and ships none
    acm = _user_data(synth["t"], "AcmHost")
    assert "enclavekit-agent" not in acm and "pip install" not in acm


def test_host_role_may_read_the_asset(synth: dict[str, Any]) -> None:
    t = synth["t"]
    [(role_id, _)] = _resources(t, "AWS::IAM::Role", "HostRole").items()
    ud = _user_data(t, "Host")
    m = re.search(r"'s3://([^/]+)/([0-9a-f]{64}\.pyz)'", ud)
    assert m is not None
    bucket, key = m.groups()
    statements = []
    for pol in _resources(t, "AWS::IAM::Policy", "Host").values():
        if {"Ref": role_id} in pol["Properties"]["Roles"]:
            statements += pol["Properties"]["PolicyDocument"]["Statement"]

    def arn(value: Any) -> str:
        if isinstance(value, dict) and "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(arn(p) for p in parts)
        if value == {"Ref": "AWS::Partition"}:
            return "aws"
        return str(value)

    readers = [s for s in statements if s["Effect"] == "Allow" and "s3:GetObject*" in s["Action"]]
    resources = {arn(r) for s in readers for r in s["Resource"]}
    assert f"arn:aws:s3:::{bucket}/*" in resources, (resources, key)


def test_rendered_download_runs_and_refuses_a_tampered_bundle(
    synth: dict[str, Any], bundle: agent_bundle.AgentBundle, tmp_path: Path
) -> None:
    from moto.server import ThreadedMotoServer

    ud = _user_data(synth["t"], "Host")
    start = ud.index("aws s3 cp --only-show-errors")
    end = ud.index("\n", ud.index(f"install -m 0644 '{AGENT_BUNDLE}.part'"))
    opt = tmp_path / "opt"
    opt.mkdir()
    script = "set -euo pipefail\n" + ud[start:end].replace("/opt/enclavekit", str(opt)) + "\n"
    m = re.search(r"'s3://([^/]+)/(\S+)'", script)
    assert m is not None
    bucket, key = m.groups()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        env = local_aws_env(endpoint, scratch_dir=tmp_path / "aws")
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # this venv's aws CLI
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=key, Body=bundle.data)

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120
            )

        ok = run()
        assert ok.returncode == 0, ok.stderr
        installed = opt / "enclavekit-agent.pyz"
        assert installed.read_bytes() == bundle.data
        assert not (opt / "enclavekit-agent.pyz.part").exists()
        installed.unlink()
        s3.put_object(Bucket=bucket, Key=key, Body=bundle.data + b"\n# tampered")
        bad = run()
        assert bad.returncode == 1
        assert "enclavekit: agent bundle SHA-256 mismatch" in bad.stderr
        assert not installed.exists()
    finally:
        server.stop()
        if server._server is not None:
            server._server.server_close()
