"""The exception tree is closed: what we raise for our own conditions comes from
enclavekit.errors, and every class of the tree is documented there and raised somewhere."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from enclavekit import errors

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for d in ("enclavekit", "enclave_app", "constructs/enclave_constructs", "local_backend")
    for p in sorted((ROOT / d).rglob("*.py"))
]
# Builtins we never raise for a condition of our own (the tree has a class for each case).
BANNED = {"ValueError", "RuntimeError", "TypeError", "KeyError", "Exception"}
# Exception classes defined outside the tree, each with the reason it stays foreign.
FOREIGN_CLASSES = {
    # moto's classes: the server renders them as the service's wire error.
    "ChangeSetNotFound": "a moto CloudFormationError",
    "InvalidChangeSetStatus": "a moto CloudFormationError",
    "UnsupportedResourceType": "a moto ValidationError",
    "AwsError": "a werkzeug HTTPException: the IAM layer's wire error",
    "KmsError": "a moto JsonRESTError: KMS's wire error",
    "InternalFailure": "a moto ServiceException",
    "NotEmulated": "a moto ServiceException",
    # The kernel's answer, errno and all.
    "_Refused": "an OSError carrying the kernel's errno",
    # The user's code failing, not enclavekit refusing.
    "TaskFailed": "a Step Functions task's ASL error",
    # Signals inside the IAM layer carrying AWS's wording to the one caller that renders them
    # (a CloudFormation resource event, a Lambda invocation error), never shown as ours.
    "ResourceAccessDenied": "iam_authz/cfn_role.py: the resource event's reason",
    "ServiceCannotAssume": "iam_authz/service_roles.py: Lambda's invocation error",
    # The ACM enclave's RPC server (inside the enclave): vtok_rpc's own error variants, sent
    # to the agent on the wire exactly as AWS's p11ne-server names them.
    "ApiError": "acm_enclave/p11ne: vtok_rpc's ApiError variants",
    "DeviceError": "acm_enclave/p11ne: vtok_rpc's device errors",
    "ParseError": "acm_enclave/p11ne: a request that does not parse gets no answer",
    # The ACM agent in a host (AWS's vtok_agent stand-in): its error kinds, printed in its
    # journal as AWS's agent prints them ("Error: ConfigError: ...", "AgentError: ...").
    "AgentError": "host/acm_agent.py: vtok_agent's AgentError",
    "TokenError": "host/acm_agent.py: vtok_agent's token errors",
    "ConfigError": "host/acm_config.py: vtok_agent's ConfigError line",
    # The tools a host runs in place of the real ones, failing as those tools do: systemctl's
    # "Unit X.service not found.", the allocator script's "Error: ..." lines.
    "UnitNotFound": "host/systemd.py: systemctl's unit-not-found answer",
    "AllocatorError": "host/nitro.py: nitro-enclaves-allocator's 'Error: ...' line",
    # A custom resource's provider answering FAILED (or never answering): its Reason becomes
    # the resource event's status reason, as CloudFormation shows it.
    "CustomResourceFailed": "cloudformation/custom_resource.py: the provider's FAILED reason",
}
# `raise <Builtin>(` sites still to convert, each with its reason (none left: the list only
# shrinks, so keep it empty).
FOREIGN_RAISES: dict[str, str] = {}


def _trees() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(ROOT)), ast.parse(p.read_text())) for p in SOURCES]


def _base_names(node: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]


def test_no_builtin_raised_for_our_own_conditions() -> None:
    found = []
    for path, tree in _trees():
        if path in FOREIGN_RAISES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name) and func.id in BANNED:
                    found.append(f"{path}:{node.lineno} raise {func.id}")
    assert not found, "raise a class of enclavekit.errors instead:\n" + "\n".join(found)


def test_every_exception_class_is_in_the_tree_or_explained() -> None:
    tree_names = {n for n, c in vars(errors).items() if inspect.isclass(c)}
    ours = {n for n in tree_names if issubclass(getattr(errors, n), errors.EnclaveKitError)}
    defined: dict[str, list[str]] = {}
    for _path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                defined[node.name] = _base_names(node)
    stray = []
    # Fixed point: a class is in the tree when one of its bases is.
    inside = set(ours)
    changed = True
    while changed:
        changed = False
        for name, bases in defined.items():
            if name not in inside and any(b in inside for b in bases):
                inside.add(name)
                changed = True
    for name, bases in defined.items():
        looks_like_error = any(
            b.endswith(("Error", "Exception", "Failure")) or b in ("OSError",) for b in bases
        )
        if looks_like_error and name not in inside and name not in FOREIGN_CLASSES:
            stray.append(f"{name}({', '.join(bases)})")
    assert not stray, "derive from enclavekit.errors or explain in FOREIGN_CLASSES: " + ", ".join(
        sorted(stray)
    )


@pytest.mark.parametrize(
    "cls",
    [
        c
        for c in vars(errors).values()
        if inspect.isclass(c) and issubclass(c, errors.EnclaveKitError)
    ],
    ids=lambda c: c.__name__,
)
def test_every_class_of_the_tree_is_documented_and_used(cls: type) -> None:
    assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the tree doc"
    text = "\n".join(p.read_text() for p in SOURCES if p.name != "errors.py")
    assert cls.__name__ in text, f"{cls.__name__} is never raised or subclassed: remove it"


def test_foreign_error_mapping() -> None:
    class FakeClientError(Exception):
        response = {"Error": {"Code": "AccessDeniedException", "Message": "no\n  way"}}

    assert errors.aws_error(FakeClientError()) == ("AccessDeniedException", "no way")
    assert errors.aws_error(OSError("x")) is None
    assert errors.one_line(ValueError("a\n b")) == "a b"
    assert errors.one_line(ValueError()) == "ValueError"
    assert errors.os_reason(FileNotFoundError(2, "No such file or directory")) == (
        "No such file or directory"
    )
