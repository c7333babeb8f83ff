"""Cross-stack exports and `Fn::ImportValue`, with the guards AWS puts around them.

moto resolves `Fn::ImportValue` against the exports handed to a stack when it is built; a stack
made by CreateChangeSet got none, so every import failed with "No export named ..." although
ListExports showed it. Here every execution sees the region's current exports, and:
- an export name must be unique in the region (a stack's own previous exports excepted);
- an export another stack imports cannot be removed by an update ("cannot be updated as it is
  in use by") nor by deleting its stack ("cannot be deleted as it is in use by"), as on AWS;
- ListImports names the stacks that import an export.

`Fn::GetStackOutput` (the weak references of `@aws-cdk/core:defaultCrossStackReferences:
weak`, on in every new `cdk init` app) reads another stack's output at create/update time and
locks nothing, as on AWS; a missing stack or output fails the operation with its name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from moto.cloudformation import parsing
from moto.cloudformation.exceptions import ValidationError
from moto.cloudformation.models import CloudFormationBackend, Stack


def _import_args(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Fn::ImportValue":
                yield value
            else:
                yield from _import_args(value)
    elif isinstance(node, list):
        for item in node:
            yield from _import_args(item)


def imported_names(stack: Stack) -> set[str]:
    """The export names `stack`'s current template imports (arguments resolved)."""
    template = stack.template_dict or {}
    names: set[str] = set()
    for section in ("Resources", "Outputs", "Conditions"):
        for arg in _import_args(template.get(section) or {}):
            if isinstance(arg, str):
                names.add(arg)
                continue
            if _names_resources(arg, template):
                continue  # resolving would create resources lazily: imports from parameters only
            try:
                value = parsing.clean_json(arg, stack.resource_map)
            except Exception:  # noqa: BLE001 - an unresolvable argument imports nothing
                continue
            if isinstance(value, str):
                names.add(value)
    return names


def _names_resources(arg: Any, template: dict[str, Any]) -> bool:
    from .ordering import referenced

    found: set[str] = set()
    referenced(arg, set(template.get("Resources") or {}), found)
    return bool(found)


def importers(backend: CloudFormationBackend, name: str, *, exclude: str = "") -> list[str]:
    """Names of the live stacks (other than stack id `exclude`) that import export `name`."""
    return sorted(
        s.name
        for s in backend.stacks.values()
        if s.stack_id != exclude
        and not s.status.startswith("DELETE_COMPLETE")
        and s.status != "REVIEW_IN_PROGRESS"
        and name in imported_names(s)
    )


def own_export_names(backend: CloudFormationBackend, stack: Stack) -> list[str]:
    """The export names `stack` holds in the region's export table now."""
    return [n for n, e in backend.exports.items() if e.exporting_stack_id == stack.stack_id]


def template_export_names(stack: Stack, template: dict[str, Any]) -> set[str] | None:
    """The literal export names in `template`'s Outputs; None if one is not a literal (then
    removal checks wait until the outputs are resolved)."""
    names: set[str] = set()
    for output in (template.get("Outputs") or {}).values():
        export = (output or {}).get("Export") if isinstance(output, dict) else None
        if not export:
            continue
        name = export.get("Name")
        if not isinstance(name, str):
            try:
                name = parsing.clean_json(name, stack.resource_map)
            except Exception:  # noqa: BLE001
                return None
        if not isinstance(name, str):
            return None
        names.add(name)
    return names


def in_use_error(backend: CloudFormationBackend, stack: Stack, names: set[str], verb: str) -> str:
    """AWS's reason when one of `names` (exports of `stack`) is imported elsewhere, else ''."""
    for name in sorted(names):
        users = importers(backend, name, exclude=stack.stack_id)
        if users:
            return f"Export {name} cannot be {verb} as it is in use by {' and '.join(users)}"
    return ""


def check_removed_exports(
    backend: CloudFormationBackend, stack: Stack, template: dict[str, Any]
) -> None:
    """Refuse an update that drops an export another stack imports (before anything changes)."""
    new = template_export_names(stack, template)
    if new is None:
        return
    removed = set(own_export_names(backend, stack)) - new
    reason = in_use_error(backend, stack, removed, "updated")
    if reason:
        raise ValidationError(message=reason)


def check_unique(backend: CloudFormationBackend, stack: Stack) -> None:
    """Export names must be unique in the region; a stack may keep its own."""
    for export in stack.exports:
        held = backend.exports.get(export.name)
        if held is not None and held.exporting_stack_id != stack.stack_id:
            raise ValidationError(
                message=(
                    f"Export with name {export.name} is already exported by stack "
                    f"{_stack_name(backend, held.exporting_stack_id)}"
                )
            )


def _stack_name(backend: CloudFormationBackend, stack_id: str) -> str:
    stack = backend.stacks.get(stack_id)
    return stack.name if stack is not None else stack_id


def publish(backend: CloudFormationBackend, stack: Stack) -> None:
    """Replace `stack`'s entries in the region's export table by its current exports."""
    withdraw(backend, stack)
    for export in stack.exports:
        backend.exports[export.name] = export


def withdraw(backend: CloudFormationBackend, stack: Stack) -> None:
    """Remove every export of `stack` from the region's export table."""
    for name in own_export_names(backend, stack):
        backend.exports.pop(name, None)


def attach(backend: CloudFormationBackend, stack: Stack) -> None:
    """Let `stack`'s `Fn::ImportValue` see the region's current exports."""
    stack.cross_stack_resources = backend.exports
    stack.resource_map.cross_stack_resources = backend.exports


_original_clean_json = parsing.clean_json


def _clean_json(resource_json: Any, resources_map: Any) -> Any:
    if isinstance(resource_json, dict) and "Fn::GetStackOutput" in resource_json:
        return get_stack_output(
            _original_clean_json(resource_json["Fn::GetStackOutput"], resources_map),
            resources_map,
        )
    return _original_clean_json(resource_json, resources_map)


def get_stack_output(args: Any, resources_map: Any) -> Any:
    """The value of `OutputName` of stack `StackName` (same account; `Region` or this one)."""
    from moto.cloudformation.models import cloudformation_backends

    if not isinstance(args, dict) or not args.get("StackName") or not args.get("OutputName"):
        raise ValidationError(
            message=(
                "Template error: Fn::GetStackOutput expects an object with StackName and "
                f"OutputName, found {args!r}"
            )
        )
    region = args.get("Region") or resources_map._region_name
    backend = cloudformation_backends[resources_map._account_id][region]
    name = args["StackName"]
    stack = next(
        (
            s
            for s in backend.stacks.values()
            if name in (s.name, s.stack_id) and s.status != "REVIEW_IN_PROGRESS"
        ),
        None,
    )
    if stack is None:
        raise ValidationError(message=f"Stack with id {name} does not exist")
    for output in stack.outputs or []:
        if output["OutputKey"] == args["OutputName"]:
            return output["OutputValue"]
    raise ValidationError(
        message=f"Output {args['OutputName']} does not exist in stack {stack.name}"
    )


def install() -> None:
    """Teach moto's template engine Fn::GetStackOutput (idempotent)."""
    parsing.clean_json = _clean_json


def list_imports(backend: CloudFormationBackend, export_name: str) -> list[str]:
    """ListImports: the stacks importing `export_name`; AWS's error when none does."""
    users = importers(backend, export_name)
    if not users:
        raise ValidationError(message=f"Export '{export_name}' is not imported by any stack.")
    return users
