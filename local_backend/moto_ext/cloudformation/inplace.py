"""Tag-only updates happen in place, as on AWS (Tags are "Update requires: No interruption"
for every resource type that has them).

moto has no update handler for most types, so the CloudFormation extension replaces such a
resource on any change — and a replacement that creates before it deletes collides with the
original (a subnet's CIDR "conflicts with another subnet"). An update whose only difference is
`Properties.Tags` now keeps the resource and re-tags it (EC2 resources in the EC2 backend).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from moto.cloudformation import parsing
from moto.ec2.models.core import TaggedEC2Resource


def remember(resource: Any, resource_json: dict[str, Any]) -> None:
    """Keep the template JSON a resource was made from (to tell a tag-only change later)."""
    with contextlib.suppress(AttributeError):  # a model with __slots__ keeps no memory
        resource._ek_json = copy.deepcopy(resource_json)


def _without_tags(resource_json: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource_json)
    (out.get("Properties") or {}).pop("Tags", None)
    return out


def tags_only_change(original: Any, resource_json: dict[str, Any]) -> bool:
    """Whether `resource_json` differs from `original`'s template JSON in Tags alone."""
    old = getattr(original, "_ek_json", None)
    if not isinstance(old, dict) or old.get("Type") != resource_json.get("Type"):
        return False
    return _without_tags(old) == _without_tags(resource_json)


def retag(
    original: Any, resource_json: dict[str, Any], resources_map: Any, account_id: str, region: str
) -> Any:
    """Apply the new Tags to `original` in place and return it."""
    if isinstance(original, TaggedEC2Resource):
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[account_id][region]
        raw = (resource_json.get("Properties") or {}).get("Tags") or []
        new = {t["Key"]: t["Value"] for t in parsing.clean_json(raw, resources_map)}
        rid = original.physical_resource_id
        current = {k: v for k, v in backend.tags.get(rid, {}).items() if not k.startswith("aws:")}
        gone = [k for k in current if k not in new]
        if gone:
            backend.delete_tags([rid], {k: None for k in gone})
        if new:
            backend.create_tags([rid], new)
    remember(original, resource_json)
    return original
