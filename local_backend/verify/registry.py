"""The verify checks, in the order they run, with the host kinds each applies to (like lint's
rule registry): `AGENT` hosts run our parent agent (host.json names an image), `USERDATA` hosts
are any other enclave-enabled instance booted from its user data (ACM agent hosts included).

A check is a function of the kind's host object returning (ok, detail) or a `Check`; the
drivers walk this list. Adding a check is adding its module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from local_backend.verify.agent_host import check_boot
from local_backend.verify.https import check_https
from local_backend.verify.image_pcrs import check_image
from local_backend.verify.key_not_on_parent import check_key_not_on_parent
from local_backend.verify.keys import check_keys
from local_backend.verify.nsm import check_nsm_parent_refused
from local_backend.verify.parent_denied import check_parent_denied, check_userdata_parent_denied
from local_backend.verify.probes import check_debug_denied, check_other_image_denied
from local_backend.verify.renewal import RENEWAL
from local_backend.verify.secret import check_secret
from local_backend.verify.userdata import _not_applicable, check_attestation, check_enclaves

AGENT = "agent"
USERDATA = "userdata"


@dataclass(frozen=True)
class VerifyCheck:
    name: str
    kind: str  # AGENT or USERDATA: the host object `run` takes
    run: Callable[[Any], Any]
    opt_in: bool = False  # runs only when `--check` names it


REGISTRY: tuple[VerifyCheck, ...] = (
    VerifyCheck("boot", AGENT, check_boot),
    VerifyCheck("image-pcrs", AGENT, check_image),
    VerifyCheck("secret", AGENT, check_secret),
    VerifyCheck("parent-denied", AGENT, check_parent_denied),
    VerifyCheck("nsm-parent-refused", AGENT, lambda host: check_nsm_parent_refused(host.h)),
    VerifyCheck("debug-denied", AGENT, check_debug_denied),
    VerifyCheck("other-image-denied", AGENT, check_other_image_denied),
    VerifyCheck("https", AGENT, check_https),
    VerifyCheck("key-not-on-parent", AGENT, check_key_not_on_parent),
    # user-data hosts: boot runs first in the driver; TLS and the ACM probes run after these
    VerifyCheck("enclaves", USERDATA, check_enclaves),
    VerifyCheck("attestation", USERDATA, check_attestation),
    VerifyCheck("keys", USERDATA, check_keys),
    VerifyCheck("parent-denied", USERDATA, check_userdata_parent_denied),
    VerifyCheck("nsm-parent-refused", USERDATA, check_nsm_parent_refused),
    VerifyCheck(  # it waits for the agent's sync (acm.yaml sync_interval_secs)
        RENEWAL, USERDATA, lambda h: _not_applicable(RENEWAL, "run after the others"), True
    ),
)


def of_kind(kind: str) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """(name, function) of the checks of `kind`, in order."""
    return tuple((c.name, c.run) for c in REGISTRY if c.kind == kind)


CHECKS = of_kind(AGENT)  # a host running our parent agent
HOST_CHECKS = of_kind(USERDATA)  # any other enclave-enabled host
OPT_IN = tuple(c.name for c in REGISTRY if c.opt_in)
