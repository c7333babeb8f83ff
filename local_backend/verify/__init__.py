"""`enclavekit verify`: prove, for every enclave host of every deployed stack, the whole chain.

Every enclave-enabled instance (EnclaveOptions on it or its launch template) boots from its
user data; verify checks what each one runs. A host whose user data set up our parent agent
(the `/etc/enclavekit/host.json` it wrote names an image) gets, after `boot` (the user data
ran; else the failing command and the console's last lines):

1. image-pcrs       the enclave's fresh attestation document verifies against the local root, and
                    its PCRs are the image's and exactly those the attested key policies name;
2. secret           the enclave decrypted the application secret with attestation (it answers a
                    challenge: HMAC-SHA256 of a fresh nonce under the secret);
3. parent-denied    the same Decrypt from the parent, with the instance role but no attestation,
                    is denied (for the secret and for the certificate's private key);
   nsm-parent-refused  the enclave's NSM closes a parent-side process's connection unanswered;
4. debug-denied     a debug-mode enclave of the same image is denied;
   other-image-denied  an enclave of a different image (same app, one byte more) is denied;
5. https            an HTTPS request to the host's port gets a chain that verifies to the local
                    CA for the configured domain, and a response produced inside the enclave;
6. key-not-on-parent  the private key is not in the S3 object in plaintext, not in the
                    endpoint's state or logs, not in the parent-side processes' memory — and, as
                    a control that the search works, it IS found in the enclave's memory.

A check that cannot run counts as failed, with the reason: nothing is skipped silently.

Every other enclave-enabled instance, built with our constructs (an ACM agent host) or not, is
verified by what it runs (`userdata`, `acm`): boot, enclaves and PCRs, attestation, attested
keys, parent denied, NSM refusal, HTTPS where an ACM certificate is served; a check
that does not apply there says why (N/A). Probe enclaves (debug-denied, other-image-denied)
run on the machine in a scratch emulator directory with the host's role and instance id (so
PCR3/PCR4 are the host's) and their own KMS vsock-proxy: the host's allocator pool holds
exactly its one enclave, as on EC2.

Layout: `report` (Check, HostReport, VerifyReport: table, JSON, JUnit; `timed`, `short`,
`not_applicable`), `registry` (every check in order, or a family of checks sharing a setup,
with the host kind it applies to), one module per check or family (`image_pcrs`, `secret`,
`parent_denied`, `nsm`, `probes`, `https`, `key_not_on_parent`, `keys`, `renewal`; for ACM
agent hosts `acm_tls` and `acm_probes`), what they share (`acm_host`: acm.yaml, the agent,
nginx and the ACM enclave as read in the host; `acm_probe_enclave`: booting a probe enclave
there; `processes`: the host's processes and the endpoint's admin paths), the hosts as verify
sees them (`agent_host`, `userdata`) and `driver` (`verify()`: one loop over hosts and the
registry). This package re-exports the names its importers use.
"""

from local_backend.verify.acm_host import served_https
from local_backend.verify.acm_probes import check_acm_probes
from local_backend.verify.agent_host import VERIFIER_DIR, ParentAgentHost
from local_backend.verify.driver import verify, verify_host
from local_backend.verify.probes import check_debug_denied, check_other_image_denied, variant_image
from local_backend.verify.processes import endpoint_keyscan, process_tree
from local_backend.verify.registry import CHECKS, HOST_CHECKS, OPT_IN, REGISTRY
from local_backend.verify.renewal import Request, judge_renewal
from local_backend.verify.report import Check, HostReport, VerifyReport
from local_backend.verify.userdata import UserDataHost

__all__ = [
    "CHECKS",
    "HOST_CHECKS",
    "OPT_IN",
    "REGISTRY",
    "VERIFIER_DIR",
    "Check",
    "HostReport",
    "ParentAgentHost",
    "Request",
    "UserDataHost",
    "VerifyReport",
    "check_acm_probes",
    "check_debug_denied",
    "check_other_image_denied",
    "endpoint_keyscan",
    "judge_renewal",
    "process_tree",
    "served_https",
    "variant_image",
    "verify",
    "verify_host",
]
