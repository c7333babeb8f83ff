"""nsm-parent-refused: a parent-side process inside the host asking an enclave's NSM gets
nothing, and the NSM logs refusing it.
"""

from __future__ import annotations

import json
import sys

from local_backend.host import control
from local_backend.host.layout import HOST_EMULATOR_STATE
from local_backend.verify.userdata import UserDataHost, running_enclaves

# Run inside the host (as root of its parent side): ask the enclave's NSM for a document with
# our own public key; print what happened and whether the NSM logged refusing this process.
_NSM_PROBE = """
import json, os, secrets, sys, time
from enclavekit import nsm
from enclavekit.errors import EnclaveKitError
from enclavekit.transport import SocketNsm, nsm_request
from local_backend.emulator.state import Layout, state_dir
layout = Layout(state_dir(sys.argv[1]))
slot = layout.slot_dir(layout.slot_of(sys.argv[2]))
log = slot / "monitor.log"
seen = log.stat().st_size if log.is_file() else 0
client = SocketNsm(slot / "nsm.sock")
out = {"pid": os.getpid()}
try:
    reply = nsm_request(client, nsm.Attestation(nonce=secrets.token_bytes(16),
                                                public_key=secrets.token_bytes(64)))
    out["answered"] = type(reply).__name__
except EnclaveKitError as exc:
    out["error"] = str(exc)
finally:
    client.close()
mine = "refused a connection to nsm.sock from pid %d " % os.getpid()
deadline = time.monotonic() + 3
while True:
    with open(log, "rb") as fh:
        fh.seek(seen)
        out["logged"] = mine in fh.read().decode(errors="replace")
    if out["logged"] or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(json.dumps(out))
"""


def check_nsm_parent_refused(h: UserDataHost) -> tuple[bool, str]:
    results = []
    for e in running_enclaves(h):
        eid = str(e["EnclaveID"])
        run = control.host_exec(
            h.layout, [sys.executable, "-c", _NSM_PROBE, HOST_EMULATOR_STATE, eid], timeout=60
        )
        if run.returncode != 0:
            return False, f"could not check: the probe in the host failed: {run.stderr[-300:]}"
        out = json.loads(run.stdout.strip().splitlines()[-1])
        if "answered" in out:
            return False, f"enclave {eid}'s NSM answered a parent-side process: {out['answered']}"
        if "expected a listening socket" in out.get("error", ""):
            return False, f"could not check: enclave {eid}'s NSM socket does not answer"
        if not out.get("logged"):
            return False, (
                f"could not check: enclave {eid}'s NSM closed without a reply to pid "
                f"{out['pid']} but recorded no refusal of it"
            )
        results.append(f"{eid} (pid {out['pid']} in the host)")
    return True, f"closed unanswered, refusal in the monitor log: {', '.join(results)}"
