"""Checks of an ACM for Nitro Enclaves agent host (set-up A): HTTPS from nginx with the key
in ACM's enclave, the key not on the parent, and the debug/variant probe enclaves booted in
the host as the agent boots its own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from enclavekit.errors import CheckFailed
from local_backend.host import control, hooks
from local_backend.host.layout import HostLayout
from local_backend.verify.key_not_on_parent import _comm, _endpoint_keyscan, _host_processes
from local_backend.verify.report import Check, _short, _timed
from local_backend.verify.userdata import UserDataHost, _not_applicable, _running


def _associated_certificates(h: UserDataHost) -> list[str]:
    """ACM certificates associated with the host role (ACM for Nitro Enclaves)."""
    acm, ec2 = h.client("acm"), h.client("ec2")
    out = []
    for c in acm.list_certificates().get("CertificateSummaryList", []):
        arn = c["CertificateArn"]
        roles = ec2.get_associated_enclave_certificate_iam_roles(CertificateArn=arn)
        if any(r.get("AssociatedRoleArn") == h.role_arn for r in roles["AssociatedRoles"]):
            out.append(arn)
    return out


def check_tls(h: UserDataHost) -> list[Check]:
    """https and key-not-on-parent apply where the host serves an ACM certificate."""
    certs = _associated_certificates(h)
    if not certs:
        why = "no ACM certificate is associated with the host role: the host serves no TLS of ours"
        return [_not_applicable("https", why), _not_applicable("key-not-on-parent", why)]
    tokens = _acm_tokens(h)
    if not tokens:
        why = (
            f"could not check: certificate {certs[0].rsplit('/', 1)[-1]} is associated with the "
            f"host role, but the host runs no ACM for Nitro Enclaves agent ({ACM_CONFIG} with a "
            "token whose target is an nginx stanza) that could serve it"
        )
        return [Check("https", False, why), Check("key-not-on-parent", False, why)]
    token = next((t for t in tokens if t.source.certificate_arn in certs), tokens[0])
    waiting = wait_for_stanza(h, token)
    if waiting:
        return [Check("https", False, waiting), Check("key-not-on-parent", False, waiting)]
    https = _timed("https", lambda: check_acm_https(h, token))
    key = _timed("key-not-on-parent", lambda: check_acm_key_not_on_parent(h, token))
    return [https, key]


# ACM for Nitro Enclaves on the host (set-up A): nginx on the parent, the key in ACM's enclave.
ACM_CONFIG = "/etc/nitro_enclaves/acm.yaml"


ACM_UNIT = "nitro-enclaves-acm.service"


ACM_READY_TIMEOUT_S = 120.0  # boot of the ACM enclave + AddToken (attested KMS) + nginx start


HTTPS_PORT = 443


def _host_path(h: UserDataHost, path: str) -> Path:
    """A path of the host's root filesystem, seen from the machine."""
    return Path(f"/proc/{h.host.get('init_pid')}/root") / path.lstrip("/")


def _acm_tokens(h: UserDataHost) -> list[Any]:
    """The ACM-sourced tokens of the host's acm.yaml that target an nginx stanza."""
    try:
        conf = _acm_conf(h)
    except OSError:
        return []
    return [t for t in conf.tokens if t.source.kind == "Acm" and t.target is not None]


def wait_for_stanza(
    h: UserDataHost, token: Any, timeout: float = ACM_READY_TIMEOUT_S
) -> str | None:
    """Wait until the agent has provisioned the token (its stanza exists): the agent does that
    after the user data has run. None when it is there; else why not, with the journal's end."""
    path = _host_path(h, token.target.path)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            journal = control.host_exec(h.layout, ["journalctl", "-u", ACM_UNIT]).stdout
            tail = " | ".join(x.strip() for x in journal.strip().splitlines()[-4:])
            return (
                f"the ACM agent wrote no {token.target.path} for token {token.label} within "
                f"{timeout:.0f} s; {ACM_UNIT}: {tail or '(no journal)'}"
            )
        time.sleep(0.5)
    return None


def _stanza_pin(h: UserDataHost, token: Any) -> str:
    """The PIN the agent wrote into the token's nginx stanza (`...?pin-value=<pin>"`)."""
    text = _host_path(h, token.target.path).read_text()
    if "pin-value=" not in text:
        raise CheckFailed(f"{token.target.path}: no pin-value in the agent's stanza")
    return text.split("pin-value=", 1)[1].split('"', 1)[0]


def _acm_enclave(h: UserDataHost) -> dict[str, Any]:
    if not h.enclaves:  # outside verify's run (benches): ask the host
        h.enclaves = hooks.host_enclaves(h.layout)
    running = _running(h)
    if len(running) != 1:
        raise CheckFailed(f"expected the one ACM enclave RUNNING, found {len(running)}")
    return running[0]


def _signatures(h: UserDataHost, token: Any, pin: str) -> int:
    """The token's signature count (DescribeToken over the ACM enclave's RPC port, as the
    agent asks it), which grows by one per private-key operation done in the enclave."""
    from local_backend.acm_enclave import RPC_PORT
    from local_backend.acm_enclave.p11ne import rpc

    cid = int(_acm_enclave(h)["EnclaveCID"])
    with h.vsock.connect(cid, RPC_PORT) as sock:
        sock.settimeout(10)
        answer = rpc.call(sock, rpc.Request("DescribeToken", {"label": token.label, "pin": pin}))
    if "Ok" not in answer:
        raise CheckFailed(f"DescribeToken {token.label}: {answer.get('Err')}")
    return int(answer["Ok"]["TokenDescription"]["signatures"])


def _https_port(h: UserDataHost) -> int:
    for row in h.host.get("ports") or []:
        if row.get("port") == HTTPS_PORT:
            return int(row["host_port"])
    raise CheckFailed(
        f"port {HTTPS_PORT} of the instance is not forwarded (its security groups allow no "
        "ingress to it)"
    )


def check_acm_https(h: UserDataHost, token: Any) -> tuple[bool, str]:
    """HTTPS from the host's web server with the association's certificate and a chain to the
    local CA, each handshake's private-key operation done in the ACM enclave."""
    import socket
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from local_backend import server

    arn = token.source.certificate_arn
    got = h.client("acm").get_certificate(CertificateArn=arn)
    want_leaf = x509.load_pem_x509_certificate(got["Certificate"].encode())
    domain = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]["DomainName"]
    pin = _stanza_pin(h, token)
    port = _https_port(h)
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    before = _signatures(h, token, pin)
    handshakes = 2
    for _ in range(handshakes):  # fresh connections: each one a full handshake, signed
        with (
            socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
            ctx.wrap_socket(raw, server_hostname=domain) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
            head = tls.recv(65536)
            version = tls.version()
            leaf = tls.getpeercert(binary_form=True)
    signed = _signatures(h, token, pin) - before
    if not head.startswith(b"HTTP/1.1 "):
        return False, f"no HTTP answer over TLS: {head[:40]!r}"
    if leaf != want_leaf.public_bytes(serialization.Encoding.DER):
        return False, f"the server's certificate is not {arn.rsplit('/', 1)[-1]}'s"
    if signed < handshakes:
        return False, (
            f"{handshakes} handshakes but the ACM enclave's token signed {signed} times: the key "
            "used is not the enclave's"
        )
    return True, (
        f"{version} to {domain} via 127.0.0.1:{port}: certificate {arn.rsplit('/', 1)[-1][:8]}… "
        f"chain verifies to the local CA; {handshakes} handshakes, {signed} signatures by the "
        f"ACM enclave's token {token.label}"
    )


def check_acm_key_not_on_parent(h: UserDataHost, token: Any) -> tuple[bool, str]:
    """The certificate's key is in none of the host's parent-side processes (nginx's master and
    workers, the agent), the S3 object, the state and log files — and is in the enclave
    (positive control, searched while it signs)."""

    parent, enclave = _host_processes(h)
    req = {
        "certificate_arn": token.source.certificate_arn,
        "account_id": h.info.get("account_id") or h.role_arn.split(":")[4],
        "region": h.region,
        "paths": [str(h.state_dir)],
        "pids": [*parent, *enclave],
    }
    result = _endpoint_keyscan(h.endpoint, req, h.state_dir)
    if "error" in result:
        return False, f"the key search failed: {result['error']}"
    leaks = [f"{x['where']} ({x['form']})" for x in result["file_hits"]]
    names = {}
    for pid in parent:
        found = result["processes"].get(str(pid), {})
        if found.get("hits"):
            names[pid] = _comm(pid)
            leaks += [f"pid {pid} {names[pid]}: {x['where']} ({x['form']})" for x in found["hits"]]
    if leaks:
        return False, "private key found on the parent side: " + "; ".join(leaks[:4])
    if not any(result["processes"].get(str(p), {}).get("hits") for p in enclave):
        return False, (
            "the search did not find the key in the ACM enclave either, so its absence "
            "elsewhere proves nothing"
        )
    nginx = sum(1 for p in parent if _comm(p) == "nginx")
    mib = sum(p.get("bytes_read", 0) for p in result["processes"].values()) >> 20
    return True, (
        f"absent from {result['files_read']} state/log files and {len(parent)} parent-side "
        f"processes ({nginx} nginx); found only in the ACM enclave ({mib} MiB searched)"
    )


ACM_PROBES = ("debug-denied", "other-image-denied")


ACM_PROBE_TIMEOUT_S = 180.0  # one probe: run-enclave, boot, AddToken (attested KMS), console


VARIANT_EIF = "/run/enclavekit-verify/p11ne-variant.eif"


# Run inside the host as root, as the agent runs: boot one enclave from argv's image, give it
# the token the agent gives its own (acm.yaml's, the association's S3 object, the role's IMDS
# credentials as the envelope key: `ManagedToken`), print its AddToken answer and the lines it
# wrote about KMS to its console (a debug-mode enclave's only), then terminate it.
_ACM_PROBE = """
import json, subprocess, sys, time
from pathlib import Path
from local_backend.host import acm_config
from local_backend.host.acm_agent import ApiError, Imds, ManagedToken, rpc_call
from local_backend.emulator.runtime import EnclaveManager
from local_backend.host.layout import HOST_EMULATOR_STATE
args = json.loads(sys.argv[1])
conf = acm_config.load()
token = next(t for t in conf.tokens if t.label == args["label"])
eif = conf.enclave.image_path
if args["variant"]:
    from local_backend.verify import variant_image
    Path(args["variant"]).parent.mkdir(parents=True, exist_ok=True)
    eif = str(variant_image(Path(eif), Path(args["variant"])))
cmd = ["nitro-cli", "run-enclave", "--eif-path", eif, "--cpu-count",
       str(conf.enclave.cpu_count), "--memory", str(conf.enclave.memory_mib),
       "--enclave-name", "enclavekit-verify-probe"] + (["--debug-mode"] if args["debug"] else [])
run = subprocess.run(cmd, capture_output=True, text=True)
if run.returncode:
    print(json.dumps({"error": "nitro-cli run-enclave: " + run.stderr.strip()[-300:]}))
    sys.exit(0)
info = json.loads(run.stdout)
eid, cid = info["EnclaveID"], int(info["EnclaveCID"])
out = {"enclave_id": eid}
try:
    listed = json.loads(subprocess.run(["nitro-cli", "describe-enclaves"], capture_output=True,
                                       text=True).stdout)
    me = next(e for e in listed if e["EnclaveID"] == eid)
    out.update(pcr0=me["Measurements"]["PCR0"], flags=me.get("Flags"))
    deadline = time.monotonic() + 60
    while True:
        try:
            rpc_call(cid, conf.enclave.rpc_port, "DescribeDevice", timeout=1.0)
            break
        except (OSError, ApiError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    tok = ManagedToken(token, None, Imds(), conf.options.service)
    try:
        rpc_call(cid, conf.enclave.rpc_port, {"AddToken": {"token": tok._schema_token()}})
        out["answer"] = "Ok"
    except ApiError as exc:
        out["answer"] = exc.value
    layout = EnclaveManager(HOST_EMULATOR_STATE).layout
    console = layout.slot_dir(layout.slot_of(eid)) / "console.log"
    wanted = ("KMS Decrypt failed", "decrypted with attestation")
    end = time.monotonic() + 5
    while True:
        text = console.read_text(errors="replace") if console.is_file() else ""
        out["console"] = [x for x in text.splitlines() if any(w in x for w in wanted)]
        if out["console"] or not args["debug"] or time.monotonic() > end:
            break
        time.sleep(0.1)
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
finally:
    subprocess.run(["nitro-cli", "terminate-enclave", "--enclave-id", eid], capture_output=True)
    if args["variant"]:
        Path(args["variant"]).unlink(missing_ok=True)
print(json.dumps(out))
"""


def _run_acm_probe(h: UserDataHost, token: Any, *, debug: bool, variant: bool) -> dict[str, Any]:
    """One probe enclave inside the host (`_ACM_PROBE`): its AddToken answer and console lines."""
    args = {"label": token.label, "debug": debug, "variant": VARIANT_EIF if variant else None}
    run = control.host_exec(
        h.layout,
        [sys.executable, "-c", _ACM_PROBE, json.dumps(args)],
        timeout=ACM_PROBE_TIMEOUT_S,
    )
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        raise CheckFailed(f"the probe in the host failed: {run.stderr.strip()[-300:]}")
    return json.loads(lines[-1])


def _association_key(h: UserDataHost, token: Any) -> str | None:
    """The KMS key id the association's object is encrypted under (None: an S3 source, whose
    key the object does not name)."""
    if token.source.kind != "Acm":
        return None
    roles = h.client("ec2").get_associated_enclave_certificate_iam_roles(
        CertificateArn=token.source.certificate_arn
    )["AssociatedRoles"]
    mine = [r for r in roles if r.get("AssociatedRoleArn") == h.role_arn]
    return str(mine[0]["EncryptionKmsKeyId"]).rsplit("/", 1)[-1] if mine else None


def judge_acm_probe(out: dict[str, Any], key_id: str | None, *, debug: bool) -> tuple[bool, str]:
    """Was the probe enclave refused the certificate's key by KMS itself? AddToken must answer
    KmsDecryptFailed (AWS's RPC says no more). A debug-mode enclave's console shows KMS's own
    answer, which must be AccessDeniedException for the key; a production enclave has no
    console on Nitro, so there the positive control (the real image, same call) is the evidence
    that the call reached KMS."""
    what = "debug-mode copy of the ACM image" if debug else "one-byte variant of the ACM image"
    if "error" in out:
        return False, f"could not check: {what}: {out['error']}"
    pcr0 = "attests PCR0 zero" if debug else f"PCR0 {_short(str(out.get('pcr0')))}"
    if out.get("answer") == "Ok":
        return False, f"the {what} ({pcr0}) was given the certificate's key: AddToken answered Ok"
    if out.get("answer") != "KmsDecryptFailed":
        return False, f"could not check: {what}: AddToken answered {out.get('answer')!r}"
    if not debug:
        return True, f"{what} ({pcr0}): KmsDecryptFailed"
    said = " ".join(out.get("console") or [])
    if "got AccessDeniedException: " not in said:
        return False, f"could not check: KMS did not answer AccessDeniedException: {said[-300:]}"
    resource = said.partition(" on resource: ")[2].split(" ", 1)[0]
    if not resource.startswith("arn:aws:kms:") or (key_id and key_id not in resource):
        return False, (
            f"could not check: AccessDeniedException for {resource or 'no resource'}, not for "
            f"the association's key {key_id}"
        )
    return True, f"{what} ({pcr0}): KmsDecryptFailed; KMS: AccessDeniedException for {key_id}"


def check_acm_probes(h: UserDataHost, token: Any) -> list[Check]:
    """debug-denied and other-image-denied for an ACM agent host: a debug-mode copy and a
    one-byte variant of the package's p11ne.eif, booted in the host as the agent boots its
    own and given the same token, are each refused the certificate's key; the real image,
    booted the same way, is given it (positive control). The allocator's pool holds one ACM
    enclave, so the agent is stopped while the probes run and started again after; verify
    waits until nginx serves through its new enclave."""
    started = time.monotonic()
    key_id = _association_key(h, token)
    stop = control.host_exec(h.layout, ["systemctl", "stop", ACM_UNIT], timeout=60)
    if stop.returncode != 0:
        why = f"could not check: systemctl stop {ACM_UNIT}: {stop.stderr.strip()[-200:]}"
        return [Check(n, False, why) for n in ACM_PROBES]
    try:
        control_out = _run_acm_probe(h, token, debug=False, variant=False)
        debug_out = _run_acm_probe(h, token, debug=True, variant=False)
        variant_out = _run_acm_probe(h, token, debug=False, variant=True)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
        why = f"could not check: {type(exc).__name__}: {exc}"
        control_out = debug_out = variant_out = {"error": why}
    finally:
        restart = control.host_exec(h.layout, ["systemctl", "start", ACM_UNIT], timeout=60)
    back = (
        _wait_serving(h, token)
        if restart.returncode == 0
        else f"systemctl start {ACM_UNIT} failed: {restart.stderr.strip()[-200:]}"
    )
    seconds = round(time.monotonic() - started, 3)
    if control_out.get("answer") != "Ok":
        why = (
            "could not check: the positive control (the real p11ne.eif, booted the same way) "
            f"was not given the key either: {control_out.get('error') or control_out.get('answer')}"
        )
        return [Check(n, False, why, seconds) for n in ACM_PROBES]
    out = []
    for name, got, debug in (
        ("debug-denied", debug_out, True),
        ("other-image-denied", variant_out, False),
    ):
        ok, detail = judge_acm_probe(got, key_id, debug=debug)
        if ok and back:
            ok, detail = False, f"{detail}; but after the probes {back}"
        elif ok:
            detail += "; the real image, same call: Ok (positive control)"
        out.append(Check(name, ok, detail, seconds))
    return out


def _wait_serving(h: UserDataHost, token: Any, timeout: float = ACM_READY_TIMEOUT_S) -> str | None:
    """Wait until nginx completes a TLS handshake again (the agent restarted: new enclave,
    token, nginx restart). None when it does; else why not."""
    import ssl

    from local_backend import server

    domain = (
        h.client("acm").describe_certificate(CertificateArn=token.source.certificate_arn)[
            "Certificate"
        ]["DomainName"]
        if token.source.kind == "Acm"
        else None
    )
    ctx = ssl.create_default_context(cadata=server.ca_pem(h.state_dir).decode())
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            _get(_https_port(h), ctx, domain)
            return None
        except (OSError, ssl.SSLError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    return f"nginx did not serve HTTPS again within {timeout:.0f} s ({last})"


def _get(port: int, ctx: Any, domain: str | None, timeout: float = 20) -> tuple[bytes, bytes]:
    """One GET / on a fresh TLS connection: (the first bytes of the answer, the leaf DER)."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=domain) as tls,
    ):
        host = domain or "localhost"
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(65536)
        leaf = tls.getpeercert(binary_form=True)
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer over TLS: {head[:40]!r}")
    return head, leaf or b""


def served_https(layout: HostLayout, state_dir: Path) -> tuple[str, int] | None:
    """(domain, machine port) of the HTTPS an ACM agent host serves, for a "Try it" line."""
    h = UserDataHost(layout, state_dir)
    try:
        tokens = _acm_tokens(h)
        if not tokens:
            return None
        arn = tokens[0].source.certificate_arn
        cert = h.client("acm").describe_certificate(CertificateArn=arn)["Certificate"]
        return cert["DomainName"], _https_port(h)
    except Exception:  # noqa: BLE001 - no line to print; verify says why
        return None


def _acm_probe_checks(h: UserDataHost) -> list[Check]:
    """The ACM probes where the host runs the ACM agent (none elsewhere: a host of another
    kind has its own image's probes, or none)."""
    try:
        tokens = _acm_tokens(h)
        if not tokens:
            return []
        certs = _associated_certificates(h)
        token = next((t for t in tokens if t.source.certificate_arn in certs), tokens[0])
        return check_acm_probes(h, token)
    except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
        why = f"could not check: {type(exc).__name__}: {exc}"
        return [Check(n, False, why) for n in ACM_PROBES]


def _acm_conf(h: UserDataHost) -> Any:
    from local_backend.host import acm_config

    return acm_config.parse(_host_path(h, ACM_CONFIG).read_text())
