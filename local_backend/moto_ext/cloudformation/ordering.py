"""Resource order from the template's references, as CloudFormation derives it.

moto orders creation by `DependsOn` alone and deletes in set order with retries, so a custom
resource could be deleted after the Lambda function that must handle its Delete ("Function not
found"). Here a resource depends on what it names through `DependsOn`, `Ref`, `Fn::GetAtt` and
`Fn::Sub` (`${X}` / `${X.Attr}`); deletion runs dependents first.
"""

from __future__ import annotations

import re
from typing import Any

from moto.cloudformation import parsing

_SUB_NAME = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[^}]*)?\}")


def referenced(node: Any, names: set[str], out: set[str]) -> None:
    """Add to `out` the members of `names` that `node` names through Ref, GetAtt or Sub."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str) and value in names:
                out.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) and value else str(value).split(".")[0]
                if target in names:
                    out.add(target)
            elif key == "Fn::Sub":
                body = value[0] if isinstance(value, list) and value else value
                if isinstance(body, str):
                    out.update(n for n in _SUB_NAME.findall(body) if n in names)
                if isinstance(value, list) and len(value) > 1:
                    referenced(value[1], names, out)
                continue
            referenced(value, names, out)
    elif isinstance(node, list):
        for item in node:
            referenced(item, names, out)


def dependencies(resources: dict[str, Any]) -> dict[str, set[str]]:
    """For each logical id, the logical ids it depends on."""
    names = set(resources)
    deps: dict[str, set[str]] = {}
    for name, spec in resources.items():
        out: set[str] = set()
        if isinstance(spec, dict):
            depends = spec.get("DependsOn") or []
            out.update(
                d for d in ([depends] if isinstance(depends, str) else depends) if d in names
            )
            referenced(spec.get("Properties") or {}, names, out)
        out.discard(name)
        deps[name] = out
    return deps


def creation_order(resources: dict[str, Any]) -> list[str]:
    """Logical ids with every dependency before its dependents (cycles broken by name)."""
    deps = dependencies(resources)
    done: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: set[str]) -> None:
        if name in seen or name in path:
            return
        path.add(name)
        for dep in sorted(deps.get(name, ())):
            visit(dep, path)
        path.discard(name)
        seen.add(name)
        done.append(name)

    for name in sorted(resources):
        visit(name, set())
    return done


def deletion_order(resources: dict[str, Any]) -> list[str]:
    """Logical ids with dependents first."""
    return list(reversed(creation_order(resources)))


def _delete(self: parsing.ResourceMap) -> None:
    """Delete in deletion order (Retain kept). As on AWS, what a resource that failed to delete
    depends on stays too, and the first failure is the one reported."""
    deps = dependencies(self._resource_json_map)
    blocked: set[str] = set()
    first: Exception | None = None
    for name in deletion_order(self._resource_json_map):
        if self._resource_json_map[name].get("DeletionPolicy") == "Retain" or name in blocked:
            continue
        resource = self._parsed_resources.get(name)
        if resource is None or isinstance(resource, str):
            continue
        try:
            self._delete_resource(resource, self._resource_json_map[name])
            self._parsed_resources.pop(name, None)
        except Exception as exc:  # noqa: BLE001 - the stack's DELETE_FAILED reason
            first = first or exc
            stack = [name]
            while stack:
                for dep in deps.get(stack.pop(), ()):
                    if dep not in blocked:
                        blocked.add(dep)
                        stack.append(dep)
    if first is not None:
        raise first


_original_diff = parsing.ResourceMap.build_resource_diff


def _build_resource_diff(
    self: parsing.ResourceMap, other_template: dict[str, Any], parameters: Any = None
) -> dict[str, Any]:
    diff = _original_diff(self, other_template, parameters)
    order = {name: i for i, name in enumerate(deletion_order(self._resource_json_map))}
    diff["Remove"] = sorted(diff["Remove"], key=lambda n: order.get(n, -1))
    new_order = {name: i for i, name in enumerate(creation_order(other_template["Resources"]))}
    diff["Modify"] = sorted(diff["Modify"], key=lambda n: new_order.get(n, -1))
    return diff


def install() -> None:
    """Patch moto's ResourceMap (idempotent)."""
    parsing.ResourceMap.delete = _delete  # type: ignore[method-assign]
    parsing.ResourceMap.build_resource_diff = _build_resource_diff  # type: ignore[method-assign]
