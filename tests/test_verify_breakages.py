"""Every `enclavekit verify` check can fail: one real deployment, each property broken in turn.

One endpoint and one deployment of the sample app for the module (its host booted from its user
data). A baseline run passes every check but the two TLS ones, which fail because ACM denies
the sample's own image the certificate's key, as AWS does (set-up C; issue 10 moves the sample
to set-up A); then each test breaks exactly the property one check names — in the deployment
itself (its key policy, the host's files and sockets, the verifier's reference copy) — runs
that check and asserts it FAILS with its reason, and puts the deployment back. The faults of a
running deployment follow: a killed enclave (status, verify, `up` brings it back), a stale
instance directory of an earlier endpoint, a synth that hangs, a construct error.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from e2e_support import assert_setup_c_denied, copy_sample_app

from enclavekit import eif
from enclavekit.cli import main
from enclavekit.errors import BackendError, InvalidInput
from enclavekit.transport import unix_address
from local_backend import parent, server, up, verify
from local_backend import pytest_plugin as plugin
from local_backend.emulator.monitor import make_signer
from local_backend.emulator.nsm_server import BootMeasurements, NsmDevice, NsmServer
from local_backend.emulator.state import Layout
from local_backend.host.layout import HOST_EMULATOR_STATE, HostLayout
from local_backend.moto_ext.identity import (
    EC2_SERVICE_ACCESS_KEY_ID,
    EC2_SERVICE_SECRET_ACCESS_KEY,
)
from local_backend.parent.view import AgentHost, agent_hosts

pytestmark = pytest.mark.slow

STACK = "EnclaveService"
SECRET = b"breakage secret " + secrets.token_hex(8).encode()
PCR_PREFIX = "kms:recipientattestation:"
ZERO_PCR = "00" * 48  # a debug-mode enclave's PCR0/1/2
ENCLAVEKIT = Path(sys.executable).parent / "enclavekit"


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[plugin.LocalEndpoint]:
    endpoint = plugin.start_endpoint(tmp_path_factory.mktemp("breakage-state"))
    try:
        yield endpoint
    finally:
        plugin.stop_endpoint(endpoint)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_sample_app(
        tmp_path_factory.mktemp("breakage") / "app", context={"certificate_in_image": True}
    )


@pytest.fixture(scope="module")
def deployed(ep: plugin.LocalEndpoint, app: Path) -> plugin.Deployment:
    return plugin.deploy(ep, app, secrets={"app-secret": SECRET})


def _check(ep: plugin.LocalEndpoint, name: str) -> verify.Check:
    """Run the one check `name` on the deployment's only host."""
    report = verify.verify(ep.state_dir, checks=[name])
    assert [len(h.checks) for h in report.hosts] == [1], report.table()
    check = report.hosts[0].checks[0]
    assert check.name == name
    print(f"\n{name}: {'PASS' if check.ok else 'FAIL'}  {check.detail}")
    return check


def _host(ep: plugin.LocalEndpoint) -> verify.ParentAgentHost:
    [record] = agent_hosts(ep.state_dir, [STACK])
    return verify.ParentAgentHost(record.layout, ep.state_dir)


def _eif(host: verify.ParentAgentHost, dest: Path) -> Path:
    """The host's EIF, as its user data fetched it (the S3 asset, with the instance role)."""
    return host.parent.fetch_image(host.parent.role_credentials(), dest)


def _reprovision(deployed: plugin.Deployment) -> None:
    """After a key policy is put back: the parent provisions its enclave again at once (a
    refresh under the broken policy must not leave the enclave without its secret)."""
    host = deployed.host()
    before = host.parent_state().get("provisioned_at")
    parent.resync(deployed.endpoint.state_dir)
    deadline = time.monotonic() + 60
    while host.parent_state().get("provisioned_at") == before or not (
        host.parent_state().get("provisioned")
    ):
        assert time.monotonic() < deadline, host.parent_state()
        time.sleep(0.1)


@contextlib.contextmanager
def _key_policy(deployed: plugin.Deployment, change: Any) -> Iterator[dict[str, Any]]:
    """The app key's policy as `change(policy)` makes it, for the block; then put back."""
    kms = deployed.endpoint.client("kms")
    key = deployed.outputs[STACK]["KeyArn"]
    original = kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    policy = json.loads(original)
    change(policy)
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    try:
        yield policy
    finally:
        kms.put_key_policy(KeyId=key, PolicyName="default", Policy=original)
        _reprovision(deployed)


def _allow_pcrs(extra: dict[int, str]) -> Any:
    """A policy change: each attestation condition on PCR n also admits `extra[n]`."""

    def change(policy: dict[str, Any]) -> None:
        changed = 0
        for st in policy["Statement"]:
            for block in (st.get("Condition") or {}).values():
                for key, value in list(block.items()):
                    index = key.lower().removeprefix(PCR_PREFIX + "pcr")
                    if key.lower().startswith(PCR_PREFIX + "pcr") and int(index) in extra:
                        values = [value] if isinstance(value, str) else list(value)
                        block[key] = [*values, extra[int(index)]]
                        changed += 1
        assert changed, f"no PCR condition to widen in {policy}"

    return change


def test_baseline_every_check_passes_but_set_up_c(deployed: plugin.Deployment) -> None:
    report = deployed.verify()
    assert_setup_c_denied(report)  # the sample's image is denied ACM's key, as on AWS
    assert [c.name for c in report.hosts[0].checks] == [n for n, _ in verify.CHECKS]


# ------------------------------------------------------------------ 1. image-pcrs


def test_image_pcrs_fails_when_the_key_binds_another_pcr0(deployed: plugin.Deployment) -> None:
    other = secrets.token_hex(48)

    def pin_other(policy: dict[str, Any]) -> None:
        for st in policy["Statement"]:
            for block in (st.get("Condition") or {}).values():
                for key in block:
                    if key.lower() == PCR_PREFIX + "pcr0":
                        block[key] = other

    with _key_policy(deployed, pin_other):
        check = _check(deployed.endpoint, "image-pcrs")
    assert not check.ok
    assert re.search(rf"binds PCR0 to {other[:8]}…; the enclave has [0-9a-f]{{8}}…", check.detail)


# ------------------------------------------------------------------ 2. secret


def test_secret_fails_when_the_enclave_holds_another_value(deployed: plugin.Deployment) -> None:
    ref = deployed.endpoint.state_dir / verify.VERIFIER_DIR / STACK / "app-secret.secret"
    assert ref.read_bytes() == SECRET
    ref.write_bytes(b"not what the enclave decrypted")
    try:
        check = _check(deployed.endpoint, "secret")
    finally:
        ref.write_bytes(SECRET)
    assert not check.ok
    assert check.detail == "secret 'app-secret': the enclave's answer does not match the secret"


# ------------------------------------------------------------------ 3. parent-denied


def test_parent_denied_fails_when_the_role_may_decrypt_unattested(
    deployed: plugin.Deployment,
) -> None:
    role = deployed.outputs[STACK]["RoleArn"]

    def grant(policy: dict[str, Any]) -> None:
        # the explicit Denies of unattested use go, and the role may Decrypt without a document
        policy["Statement"] = [st for st in policy["Statement"] if st["Effect"] != "Deny"]
        policy["Statement"].append(
            {
                "Sid": "RoleDecryptWithoutAttestation",
                "Effect": "Allow",
                "Principal": {"AWS": role},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        )

    with _key_policy(deployed, grant):
        # the parent, with nothing but the instance role, reads the application secret ...
        assert _parent_decrypt(deployed) == SECRET
        check = _check(deployed.endpoint, "parent-denied")  # ... and verify says so
    assert not check.ok
    assert check.detail.startswith(
        "the parent decrypted secret 'app-secret' with the instance role and no attestation"
    )


def _parent_decrypt(deployed: plugin.Deployment) -> bytes | str:
    """The parent's view: instance-role credentials (STS, as IMDS gives them), Decrypt of the
    sealed secret without attestation. Returns the plaintext, or the error code."""
    ep, out = deployed.endpoint, deployed.outputs[STACK]
    ec2 = ep.client(  # the role trusts ec2.amazonaws.com only: assumed as EC2 assumes it
        "sts",
        aws_access_key_id=EC2_SERVICE_ACCESS_KEY_ID,
        aws_secret_access_key=EC2_SERVICE_SECRET_ACCESS_KEY,
    )
    creds = ec2.assume_role(RoleArn=out["RoleArn"], RoleSessionName="parent")
    role = {
        "aws_access_key_id": creds["Credentials"]["AccessKeyId"],
        "aws_secret_access_key": creds["Credentials"]["SecretAccessKey"],
        "aws_session_token": creds["Credentials"]["SessionToken"],
    }
    value = ep.client("ssm", **role).get_parameter(Name=out["SecretParameter"])["Parameter"]
    try:
        return bytes(
            ep.client("kms", **role).decrypt(CiphertextBlob=base64.b64decode(value["Value"]))[
                "Plaintext"
            ]
        )
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])


# ------------------------------------------------------------------ 4. nsm-parent-refused


@contextlib.contextmanager
def _nsm_socket_replaced(host: verify.ParentAgentHost) -> Iterator[Path]:
    """The enclave's nsm.sock (in the host, seen through its PID 1's root) moved aside for the
    block (the path is free to serve)."""
    layout = Layout(Path(f"/proc/{host.state['init_pid']}/root{HOST_EMULATOR_STATE}"))
    sock = layout.slot_dir(layout.slot_of(host.enclave["EnclaveID"])) / "nsm.sock"
    aside = sock.with_name("nsm.sock.aside")
    sock.rename(aside)
    try:
        yield sock
    finally:
        sock.unlink(missing_ok=True)
        aside.rename(sock)


def test_nsm_parent_refused_fails_when_the_nsm_answers_the_parent(
    deployed: plugin.Deployment, tmp_path: Path
) -> None:
    host = _host(deployed.endpoint)
    image = eif.read_eif(_eif(host, tmp_path / "image.eif"))
    module_id = host.enclave["EnclaveID"]
    boot = BootMeasurements(image.measurements, None, host.info["instance_id"], False)
    device = NsmDevice(module_id, boot, make_signer(deployed.endpoint.state_dir, module_id))
    with _nsm_socket_replaced(host) as path:
        nsm = NsmServer(device, path, peer_check=lambda _sock: None).start()  # admits anyone
        try:
            check = _check(deployed.endpoint, "nsm-parent-refused")
        finally:
            nsm.stop()
    assert not check.ok
    assert check.detail == (
        f"enclave {module_id}'s NSM answered a parent-side process: AttestationResponse"
    )


def test_nsm_parent_refused_needs_the_nsms_own_refusal(deployed: plugin.Deployment) -> None:
    """A socket that just hangs up (no NSM behind it, no refusal recorded) proves nothing."""
    host = _host(deployed.endpoint)
    with _nsm_socket_replaced(host) as path:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with unix_address(path) as addr:  # a path longer than sun_path allows
            listener.bind(addr)
        listener.listen(4)

        def hang_up() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        try:
            check = _check(deployed.endpoint, "nsm-parent-refused")
        finally:
            listener.close()
    assert not check.ok  # the probe runs inside the host, as a parent-side process there
    assert check.detail.startswith(
        f"could not check: enclave {host.enclave['EnclaveID']}'s NSM closed without a reply"
    )
    assert check.detail.endswith("but recorded no refusal of it")


# ------------------------------------------------------------------ 5. debug / other image


def test_probe_checks_fail_when_the_probe_cannot_reach_kms(deployed: plugin.Deployment) -> None:
    """Before the fix both passed with the probe's KMS port set to 1 (unreachable)."""
    host = _host(deployed.endpoint)
    host.spec["service"] = {**(host.spec.get("service") or {}), "kms_proxy_port": 1}
    for fn in (verify.check_debug_denied, verify.check_other_image_denied):
        ok, detail = fn(host)
        print(f"\n{fn.__name__} with KMS unreachable: {detail}")
        assert not ok
        assert detail.startswith("could not check: secret 'app-secret': KMS did not answer")
        assert "vsock proxy" in detail


def test_debug_denied_fails_when_the_key_admits_debug_enclaves(
    deployed: plugin.Deployment,
) -> None:
    with _key_policy(deployed, _allow_pcrs({0: ZERO_PCR, 1: ZERO_PCR, 2: ZERO_PCR})):
        check = _check(deployed.endpoint, "debug-denied")
    assert not check.ok
    assert check.detail.startswith("the probe enclave obtained the secrets:")


def test_other_image_denied_fails_when_the_key_admits_another_image(
    deployed: plugin.Deployment, tmp_path: Path
) -> None:
    host = _host(deployed.endpoint)
    variant = verify.variant_image(_eif(host, tmp_path / "image.eif"), tmp_path / "variant.eif")
    m = eif.read_eif(variant).measurements
    with _key_policy(deployed, _allow_pcrs({0: m.hex(0), 1: m.hex(1), 2: m.hex(2)})):
        check = _check(deployed.endpoint, "other-image-denied")
    assert not check.ok
    assert check.detail.startswith("the probe enclave obtained the secrets:")


# ------------------------------------------------------------------ 6. https


class _ImpostorTls:
    """What a parent could serve itself: a certificate of the local CA for the domain (the
    parent cannot get one, but the check must not rely on that alone) and an answer that
    was not produced in the enclave."""

    def __init__(self, state_dir: Path, domain: str, tmp: Path) -> None:
        from local_backend.moto_ext.acm.models import LocalCa

        cert, key = LocalCa.load_or_create(state_dir / "acm-ca").issue(domain, [])
        (tmp / "cert.pem").write_bytes(cert)
        (tmp / "key.pem").write_bytes(key)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = self.sock.accept()
                with contextlib.suppress(OSError, ssl.SSLError), raw:
                    tls = self.ctx.wrap_socket(raw, server_side=True)
                    request = tls.recv(65536).decode(errors="replace")
                    path = request.split(" ")[1] if " " in request else "/"
                    body = json.dumps({"enclave_module_id": "i-impostor-enc0", "path": path})
                    tls.sendall(
                        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                        f"Connection: close\r\n\r\n{body}".encode()
                    )
                    tls.close()


def test_https_fails_when_the_parent_serves_the_domain_itself(
    deployed: plugin.Deployment, tmp_path: Path
) -> None:
    host = deployed.host()
    impostor = _ImpostorTls(deployed.endpoint.state_dir, host.domain or "", tmp_path)
    # the host's forwarded service port now leads to the impostor (host.json's port table)
    state_file = host.instance_dir / "host.json"
    original = state_file.read_text()
    ports = [
        {**p, "host_port": impostor.port} if p["port"] == host.service_port else p
        for p in json.loads(original)["ports"]
    ]
    state_file.write_text(json.dumps({**json.loads(original), "ports": ports}))
    try:
        check = _check(deployed.endpoint, "https")
    finally:
        state_file.write_text(original)
        impostor.sock.close()
    assert not check.ok
    assert check.detail == "answered by i-impostor-enc0, not the enclave"


# ------------------------------------------------------------------ 7. key-not-on-parent


def _certificate_key(ep: plugin.LocalEndpoint, certificate_arn: str) -> bytes:
    """The certificate's private key, read out of the endpoint (which plays ACM and holds it)
    the way an attacker with the endpoint's uid would: from its memory."""
    cert_pem = ep.client("acm").get_certificate(CertificateArn=certificate_arn)["Certificate"]
    want = x509.load_pem_x509_certificate(cert_pem.encode()).public_key().public_numbers()
    begin, end = b"-----BEGIN PRIVATE KEY-----", b"-----END PRIVATE KEY-----"
    maps = Path(f"/proc/{ep.pid}/maps").read_text().splitlines()
    with open(f"/proc/{ep.pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if not perms.startswith("r") or "[v" in line:
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            for m in re.finditer(re.escape(begin) + rb"[A-Za-z0-9+/=\n]+" + re.escape(end), data):
                with contextlib.suppress(ValueError):
                    key = serialization.load_pem_private_key(m.group(0), None)
                    if key.public_key().public_numbers() == want:  # type: ignore[union-attr]
                        return m.group(0)
    raise AssertionError("the certificate's key is not in the endpoint's memory")


def test_key_not_on_parent_fails_when_the_key_is_in_a_parent_file(
    deployed: plugin.Deployment,
) -> None:
    host = _host(deployed.endpoint)
    leaked = host.dir / "leaked-key.pem"
    leaked.write_bytes(_certificate_key(deployed.endpoint, host.spec["certificate"]["arn"]))
    try:
        check = _check(deployed.endpoint, "key-not-on-parent")
    finally:
        leaked.unlink()
    assert not check.ok
    assert check.detail.startswith("private key found on the parent side: ")
    assert f"{leaked} (PEM text)" in check.detail


# ------------------------------------------------------------------ faults


def _kill_enclave(host: plugin.DeployedHost) -> None:
    view = AgentHost(HostLayout(host.instance_dir))
    pid = view.enclave_pid(host.enclave_id)
    assert pid is not None, view.enclave_record(host.enclave_id)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while view.enclave().get("State") == "RUNNING":  # describe-enclaves inside the host
        assert time.monotonic() < deadline, "the killed enclave still shows as running"
        time.sleep(0.1)


def _plant_stale_instance(ep: plugin.LocalEndpoint, host: plugin.DeployedHost) -> Path:
    """What an endpoint killed mid-deploy leaves: an instance dir of this stack whose
    processes are gone and whose instance the running endpoint never heard of."""
    stale = parent.instance_dir(ep.state_dir, "i-0deadbeefdeadbeef")
    stale.mkdir(parents=True)
    info = json.loads((host.instance_dir / "instance.json").read_text())
    (stale / "instance.json").write_text(json.dumps({**info, "instance_id": stale.name}))
    hostfile = json.loads((host.instance_dir / "host.json").read_text())
    state = {**hostfile, "state": "booting", "pid": 2**22 - 3, "init_pid": 2**22 - 2}
    (stale / "host.json").write_text(json.dumps(state))
    return stale


def test_killed_enclave_is_named_and_up_brings_it_back(
    deployed: plugin.Deployment, app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = deployed.endpoint
    host = deployed.host()
    launcher_pid = host.parent_state()["pid"]
    stale = _plant_stale_instance(ep, host)
    _kill_enclave(host)

    [row] = server.status(ep.state_dir).extra["enclave_hosts"]  # the stale dir is not listed
    assert row["instance_id"] == host.instance_id
    assert row["enclave_state"] == "TERMINATED" and not row["provisioned"]
    assert row["exit_reason"]
    assert main(["local", "status", "--state-dir", str(ep.state_dir)]) == 0
    shown = capsys.readouterr().out
    assert f"enclave {host.enclave_id} TERMINATED: " in shown
    assert "provisioned: no" in shown and "`enclavekit up` starts it again" in shown
    assert stale.name not in shown

    report = verify.verify(ep.state_dir)
    assert [h.instance_id for h in report.hosts] == [host.instance_id], report.table()
    [check] = report.hosts[0].checks
    assert not check.ok and check.name == "enclave"
    assert f"enclave {host.enclave_id} is TERMINATED" in check.detail
    assert "`enclavekit up` starts it again" in check.detail

    out = io.StringIO()
    result = up.up(app, state_dir=ep.state_dir, port=ep.port, progress=up.Progress(out))
    assert result.report is not None, out.getvalue()
    assert_setup_c_denied(result.report)
    assert [r.split(" ")[0] for r in result.restarted] == [host.instance_id]
    assert f"restarted {host.instance_id}" in out.getvalue()
    st = host.parent_state()
    assert st["enclave"]["EnclaveID"] != host.enclave_id and st["enclave_state"] == "RUNNING"
    assert st["provisioned"]  # the agent provisioned the new enclave
    assert st["pid"] == launcher_pid  # the same host: only its enclave unit was restarted
    assert server.status(ep.state_dir).pid == ep.pid  # the same endpoint throughout
    assert stale.is_dir()  # left alone, and harmless
    # the "Try it" line up prints runs as printed (with this venv's enclavekit) and reaches the
    # enclave, which has no certificate to present: set-up C is denied ACM's key, as on AWS
    [try_it] = up.try_it_lines(ep.state_dir, [STACK], command=str(ENCLAVEKIT))
    assert try_it.startswith("Try it: curl --cacert <(")
    done = subprocess.run(
        ["bash", "-c", try_it.removeprefix("Try it: ") + " --silent --show-error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "SSL" in done.stderr, done.stderr


def test_a_hanging_app_fails_synth_by_name(ep: plugin.LocalEndpoint, tmp_path: Path) -> None:
    app = tmp_path / "hangs"
    app.mkdir()
    (app / "cdk.json").write_text(json.dumps({"app": "python3 -c 'import time; time.sleep(600)'"}))
    started = time.monotonic()
    with pytest.raises(BackendError) as failed:
        up.up(
            app,
            state_dir=ep.state_dir,
            port=ep.port,
            progress=up.Progress(io.StringIO()),
            timeouts={"synth": 5},
        )
    message = str(failed.value)
    assert message.startswith("synth: `cdk synth --quiet` did not finish within 5 s")
    assert f"local endpoint {ep.url} was already running and is still running" in message
    assert f"enclavekit local stop --state-dir {ep.state_dir}" in message
    assert time.monotonic() - started < 120
    assert not _processes_running("time.sleep(600)")  # the hanging app was stopped too


def _processes_running(needle: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            stat = (proc / "stat").read_text().rpartition(")")[2].split()
            if stat[0] != "Z" and needle.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def test_a_construct_error_is_one_line_with_exit_2(
    ep: plugin.LocalEndpoint,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = copy_sample_app(tmp_path / "t3")
    source = (app / "app.py").read_text()
    (app / "app.py").write_text(source.replace('"m5a.xlarge"', '"t3.large"'))
    with pytest.raises(InvalidInput) as failed:
        up.up(app, state_dir=ep.state_dir, port=ep.port, progress=up.Progress(io.StringIO()))
    first = str(failed.value).splitlines()[0]
    assert failed.value.exit_code == 2
    assert re.fullmatch(
        r"synth: instance_type must be enclave-capable .*got 't3\.large'.* "
        r"\(construct EnclaveHost at app\.py:\d+\)",
        first,
    ), first
    assert "Traceback" not in str(failed.value)
    # `enclavekit cdk synth`: the same line, exit 2; --verbose shows the traceback
    monkeypatch.chdir(app)
    state = ["--state-dir", str(ep.state_dir)]
    assert main(["cdk", *state, "synth", "--quiet"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert re.search(
        r"^error: instance_type must be enclave-capable .*\(construct EnclaveHost "
        r"at app\.py:\d+\)$",
        err,
        re.M,
    ), err
    assert main(["cdk", *state, "--verbose", "synth", "--quiet"]) == 2
    assert "Traceback (most recent call last):" in capfd.readouterr().err


def test_after_the_endpoint_is_killed_up_and_verify_work_again(
    deployed: plugin.Deployment, app: Path
) -> None:
    """An endpoint killed with its hosts running: they go with it (PDEATHSIG on the launcher
    chain); the next endpoint on the state dir restores the state saved after the deploy
    (local_backend.persist) and boots the instance again from its disk (a new host process and
    enclave, the user data not run twice); `up` finds the stack deployed, seals what the
    snapshot had unsealed, and verify passes."""
    ep = deployed.endpoint
    [old] = plugin.hosts_of(ep, [STACK])
    old_pids = {p for k in ("pid", "init_pid") if (p := old.parent_state().get(k))}
    os.kill(ep.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while server.status(ep.state_dir).running or plugin.listening([ep.port]):
        assert time.monotonic() < deadline  # gone, and its port with it
        time.sleep(0.1)
    orphans = set(_processes_running(str(old.instance_dir))) | old_pids
    assert old_pids  # the host's launcher and PID 1, which must not outlive the next start

    out = io.StringIO()
    result = up.up(app, state_dir=ep.state_dir, port=ep.port, progress=up.Progress(out))
    assert result.report is not None, out.getvalue()
    assert_setup_c_denied(result.report)
    alive = {p for p in orphans if Path(f"/proc/{p}").exists()}
    assert not orphans & (set(_processes_running(str(old.instance_dir))) | alive)  # all gone
    [new] = plugin.hosts_of(ep, [STACK])
    assert new.instance_id == old.instance_id and new.enclave_id != old.enclave_id
    assert [h.instance_id for h in result.report.hosts] == [new.instance_id]  # type: ignore[union-attr]
