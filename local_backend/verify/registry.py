"""The verify checks, in the order they run, with the host kind each applies to (like lint's
rule registry): `AGENT` hosts run our parent agent (host.json names an image), `USERDATA` hosts
are any other enclave-enabled instance booted from its user data (ACM agent hosts included).

An entry is one check, or a family of checks that share their setup (the ACM host's TLS
checks, its probe enclaves), turning the kind's host object into its rows. The driver walks
this list once per host. Adding a check is adding its module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from local_backend.verify.acm_probes import ACM_PROBES, acm_probe_checks
from local_backend.verify.acm_tls import TLS_CHECKS, check_tls
from local_backend.verify.agent_host import agent_boot, agent_boot_failed, serves_tls
from local_backend.verify.https import check_https
from local_backend.verify.image_pcrs import check_image
from local_backend.verify.key_not_on_parent import check_key_not_on_parent
from local_backend.verify.keys import check_keys
from local_backend.verify.nsm import check_nsm_parent_refused
from local_backend.verify.parent_denied import check_parent_denied, check_userdata_parent_denied
from local_backend.verify.probes import check_debug_denied, check_other_image_denied
from local_backend.verify.renewal import RENEWAL, renewal_checks
from local_backend.verify.report import Check, could_not_check, not_applicable, timed
from local_backend.verify.secret import check_secret
from local_backend.verify.userdata import (
    boot_check,
    check_attestation,
    check_enclaves,
    running_enclaves,
)

AGENT = "agent"
USERDATA = "userdata"

Rows = Callable[[Any], list[Check]]


@dataclass(frozen=True)
class VerifyCheck:
    names: tuple[str, ...]  # the checks (rows) it reports, as `--check` names them
    kind: str  # AGENT or USERDATA: the host object `rows` takes
    rows: Rows
    opt_in: bool = False  # runs only when `--check` names it
    always: bool = False  # runs and is reported whatever `--check` names: the others need it
    # After its rows: can none of the host's further checks run? (a gate; it always runs)
    stops: Callable[[Any, list[Check]], bool] | None = None


def check(name: str, kind: str, fn: Callable[[Any], Any], **options: Any) -> VerifyCheck:
    """One check: `fn(host)` answers (ok, detail) or a Check; timed, an exception failing it."""
    return VerifyCheck((name,), kind, lambda host: [timed(name, lambda: fn(host))], **options)


def family(names: Sequence[str], kind: str, fn: Rows, **options: Any) -> VerifyCheck:
    """Checks that share their setup: `fn(host)` answers their rows (those that apply); an
    exception fails every one of them with its reason."""

    def rows(host: Any) -> list[Check]:
        try:
            return fn(host)
        except Exception as exc:  # noqa: BLE001 - a check that cannot run fails, with why
            return could_not_check(names, exc)

    return VerifyCheck(tuple(names), kind, rows, **options)


def no_enclave_runs(h: Any, rows: list[Check]) -> bool:
    return not running_enclaves(h)


REGISTRY: tuple[VerifyCheck, ...] = (
    VerifyCheck(("boot",), AGENT, agent_boot, stops=agent_boot_failed),
    check("image-pcrs", AGENT, check_image),
    check("secret", AGENT, check_secret),
    check("parent-denied", AGENT, check_parent_denied),
    check("nsm-parent-refused", AGENT, lambda host: check_nsm_parent_refused(host.h)),
    check("debug-denied", AGENT, check_debug_denied),
    check("other-image-denied", AGENT, check_other_image_denied),
    check("https", AGENT, serves_tls("https", check_https)),
    check("key-not-on-parent", AGENT, serves_tls("key-not-on-parent", check_key_not_on_parent)),
    check(
        RENEWAL,
        AGENT,
        lambda host: not_applicable(
            RENEWAL, "the host's image terminates TLS itself, no ACM agent renews"
        ),
        opt_in=True,
    ),
    # any other enclave-enabled host, by what it runs
    VerifyCheck(
        ("boot",), USERDATA, lambda h: [boot_check(h)], always=True, stops=lambda h, r: not r[0].ok
    ),
    check("enclaves", USERDATA, check_enclaves, always=True, stops=no_enclave_runs),
    check("attestation", USERDATA, check_attestation),
    check("keys", USERDATA, check_keys),
    check("parent-denied", USERDATA, check_userdata_parent_denied),
    check("nsm-parent-refused", USERDATA, check_nsm_parent_refused),
    family(TLS_CHECKS, USERDATA, check_tls),
    # before the ACM probes, which restart the agent; it waits for the agent's sync
    family((RENEWAL,), USERDATA, renewal_checks, opt_in=True),
    family(ACM_PROBES, USERDATA, acm_probe_checks),
)


def of_kind(kind: str) -> tuple[tuple[str, VerifyCheck], ...]:
    """(name, entry) of the checks a host of `kind` reports, in order (opt-in ones left out)."""
    return tuple((n, c) for c in REGISTRY if c.kind == kind and not c.opt_in for n in c.names)


CHECKS = of_kind(AGENT)  # a host running our parent agent
HOST_CHECKS = of_kind(USERDATA)  # any other enclave-enabled host
OPT_IN = tuple(dict.fromkeys(n for c in REGISTRY if c.opt_in for n in c.names))
KNOWN = tuple(dict.fromkeys([*(n for n, _ in CHECKS + HOST_CHECKS), *OPT_IN]))  # `--check`
