"""Booting a probe enclave inside an ACM agent host, as the agent boots its own: the real
p11ne.eif, a debug-mode copy or a one-byte variant, given the agent's token (AddToken)."""

from __future__ import annotations

import json
import sys
from typing import Any

from enclavekit.errors import CheckFailed
from local_backend.host import control
from local_backend.verify.userdata import UserDataHost

ACM_PROBE_TIMEOUT_S = 180.0  # one probe: run-enclave, boot, AddToken (attested KMS), console
VARIANT_EIF = "/run/enclavekit-verify/p11ne-variant.eif"


# Run inside the host as root, as the agent runs: boot one enclave from argv's image, give it
# the token the agent gives its own (acm.yaml's, the association's S3 object, the role's IMDS
# credentials as the envelope key: `ManagedToken`), print its AddToken answer and the lines it
# wrote about KMS to its console (a debug-mode enclave's only), then terminate it.
ACM_PROBE_SCRIPT = """
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
        rpc_call(cid, conf.enclave.rpc_port, {"AddToken": {"token": tok.schema_token()}})
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


def run_acm_probe(h: UserDataHost, token: Any, *, debug: bool, variant: bool) -> dict[str, Any]:
    """One probe enclave inside the host (`ACM_PROBE_SCRIPT`): its AddToken answer and console
    lines."""
    args = {"label": token.label, "debug": debug, "variant": VARIANT_EIF if variant else None}
    run = control.host_exec(
        h.layout,
        [sys.executable, "-c", ACM_PROBE_SCRIPT, json.dumps(args)],
        timeout=ACM_PROBE_TIMEOUT_S,
    )
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        raise CheckFailed(f"the probe in the host failed: {run.stderr.strip()[-300:]}")
    return json.loads(lines[-1])
