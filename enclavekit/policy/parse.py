"""IAM policy JSON -> `Policy`, rejecting anything that is not IAM policy grammar.

Errors are one line: which element, the expected form, what was found.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Mapping
from typing import Any

from enclavekit.errors import InvalidInput, PolicyDocumentError

from .conditions import OPERATORS, parse_operator, validate_values
from .model import Condition, Policy, PrincipalRef, Statement

VERSIONS = ("2012-10-17", "2008-10-17")
_STATEMENT_KEYS = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)
_PRINCIPAL_KINDS = ("AWS", "Service", "Federated", "CanonicalUser")
_ACCOUNT_ID = re.compile(r"^\d{12}$")
_ACTION = re.compile(r"^[A-Za-z0-9*?-]+:[A-Za-z0-9*?]+$")
# Hostile input: JSON nesting beyond this is refused before json.loads (which would recurse
# into a RecursionError); no policy or template AWS accepts comes near it.
MAX_JSON_DEPTH = 100
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')
_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 3, 60, 60
_BRIEF.maxlist = _BRIEF.maxdict = _BRIEF.maxtuple = _BRIEF.maxset = 4


def brief(value: Any) -> str:
    """A short repr for messages: bounded in length and depth whatever `value` holds."""
    return _BRIEF.repr(value)


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of JSON text by one linear scan (strings skipped); stops past `limit`."""
    depth = top = 0
    for match in _JSON_TOKEN.finditer(text):
        ch = text[match.start()]
        if ch in "[{":
            depth += 1
            if depth > top:
                top = depth
                if top > limit:
                    break
        elif ch in "]}":
            depth -= 1
    return top


def load_json(text: str | bytes, what: str, limit: int = MAX_JSON_DEPTH) -> Any:
    """json.loads that refuses nesting deeper than `limit` with one line (ValueError)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if json_depth(text, limit) > limit:
        raise InvalidInput(f"found {what} nested more than {limit} levels deep")
    try:
        return json.loads(text)
    except RecursionError:  # belt and braces: the scan above should have caught it
        raise InvalidInput(f"found {what} nested too deeply") from None


def parse_policy(doc: Mapping[str, Any] | str | bytes) -> Policy:
    """Parse a policy document given as a dict or JSON text."""
    if isinstance(doc, bytes | str):
        try:
            doc = load_json(doc, "JSON")
        except (ValueError, UnicodeDecodeError) as exc:
            reason = (str(exc).splitlines() or ["?"])[0][:120]
            raise PolicyDocumentError(
                f"policy document: expected JSON text, got invalid JSON ({reason})"
            ) from None
    if not isinstance(doc, Mapping):
        raise PolicyDocumentError(
            f"policy document: expected a JSON object, got {type(doc).__name__}"
        )
    unknown = set(doc) - {"Version", "Id", "Statement"}
    if unknown:
        raise PolicyDocumentError(
            "policy document: expected only Version, Id, Statement, got "
            f"{sorted(map(brief, unknown))}"
        )
    version = doc.get("Version")
    if version is not None and version not in VERSIONS:
        raise PolicyDocumentError(
            f"policy Version: expected one of {VERSIONS}, got {brief(version)}"
        )
    if "Statement" not in doc:
        raise PolicyDocumentError("policy document: expected a Statement element, found none")
    raw = doc["Statement"]
    raw_list = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(raw_list, list) or not raw_list:
        raise PolicyDocumentError(
            f"policy Statement: expected an object or a non-empty list, got {brief(raw)}"
        )
    statements = tuple(_statement(s, i) for i, s in enumerate(raw_list))
    pid = doc.get("Id")
    if pid is not None and not isinstance(pid, str):
        raise PolicyDocumentError(f"policy Id: expected a string, got {brief(pid)}")
    return Policy(statements=statements, version=version, id=pid)


def _where(i: int, sid: Any) -> str:
    return f"statement {i}" + (f" ({sid if isinstance(sid, str) else brief(sid)})" if sid else "")


def _statement(raw: Any, i: int) -> Statement:
    if not isinstance(raw, Mapping):
        raise PolicyDocumentError(f"statement {i}: expected an object, got {brief(raw)}")
    sid = raw.get("Sid")
    where = _where(i, sid)
    if sid is not None and not isinstance(sid, str):
        raise PolicyDocumentError(f"{where} Sid: expected a string, got {brief(sid)}")
    unknown = set(raw) - _STATEMENT_KEYS
    if unknown:
        raise PolicyDocumentError(
            f"{where}: expected elements among {sorted(_STATEMENT_KEYS)}, "
            f"got {sorted(map(brief, unknown))}"
        )
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyDocumentError(f"{where} Effect: expected Allow or Deny, got {brief(effect)}")
    for a, b in (
        ("Principal", "NotPrincipal"),
        ("Action", "NotAction"),
        ("Resource", "NotResource"),
    ):
        if a in raw and b in raw:
            raise PolicyDocumentError(f"{where}: expected {a} or {b}, got both")
    if "Action" not in raw and "NotAction" not in raw:
        raise PolicyDocumentError(f"{where}: expected Action or NotAction, found neither")
    return Statement(
        sid=sid,
        effect=effect,
        principals=_principals(raw["Principal"], where) if "Principal" in raw else None,
        not_principals=(_principals(raw["NotPrincipal"], where) if "NotPrincipal" in raw else None),
        actions=_actions(raw["Action"], where, "Action") if "Action" in raw else None,
        not_actions=(
            _actions(raw["NotAction"], where, "NotAction") if "NotAction" in raw else None
        ),
        resources=_strings(raw["Resource"], where, "Resource") if "Resource" in raw else None,
        not_resources=(
            _strings(raw["NotResource"], where, "NotResource") if "NotResource" in raw else None
        ),
        conditions=_conditions(raw.get("Condition"), where),
    )


def _strings(value: Any, where: str, element: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise PolicyDocumentError(
            f"{where} {element}: expected a non-empty string or list of strings, got {brief(value)}"
        )
    return tuple(items)


def _actions(value: Any, where: str, element: str) -> tuple[str, ...]:
    items = _strings(value, where, element)
    for a in items:
        if a != "*" and not _ACTION.match(a):
            raise PolicyDocumentError(
                f"{where} {element}: expected '*' or 'service:action', got {brief(a)}"
            )
    return items


def _principals(value: Any, where: str) -> tuple[PrincipalRef, ...]:
    if value == "*":
        return (PrincipalRef("AWS", "*"),)
    if not isinstance(value, Mapping) or not value:
        raise PolicyDocumentError(
            f"{where} Principal: expected '*' or an object like {{\"AWS\": ARN}}, "
            f"got {brief(value)}"
        )
    out: list[PrincipalRef] = []
    for kind, ids in value.items():
        if kind not in _PRINCIPAL_KINDS:
            raise PolicyDocumentError(
                f"{where} Principal: expected a kind among {_PRINCIPAL_KINDS}, got {brief(kind)}"
            )
        for ident in _strings(ids, where, f"Principal.{kind}"):
            if kind == "AWS" and _ACCOUNT_ID.match(ident):
                ident = f"arn:aws:iam::{ident}:root"
            elif kind == "AWS" and ident != "*" and not ident.startswith("arn:"):
                raise PolicyDocumentError(
                    f"{where} Principal.AWS: expected an ARN, an account id or '*', "
                    f"got {brief(ident)}"
                )
            out.append(PrincipalRef(kind, ident))
    return tuple(out)


def _conditions(value: Any, where: str) -> tuple[Condition, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PolicyDocumentError(f"{where} Condition: expected an object, got {brief(value)}")
    out: list[Condition] = []
    for op_name, block in value.items():
        if not isinstance(op_name, str):
            raise PolicyDocumentError(
                f"{where} Condition: expected operator names as keys, got {brief(op_name)}"
            )
        qualifier, operator, if_exists = parse_operator(op_name, where)
        if not isinstance(block, Mapping) or not block:
            raise PolicyDocumentError(
                f"{where} Condition {op_name}: expected an object of key: value(s), "
                f"got {brief(block)}"
            )
        for key, raw_values in block.items():
            if not isinstance(key, str):
                raise PolicyDocumentError(
                    f"{where} Condition {op_name}: expected condition keys, got {brief(key)}"
                )
            items = raw_values if isinstance(raw_values, list) else [raw_values]
            if not items or not all(isinstance(v, str | bool | int | float) for v in items):
                raise PolicyDocumentError(
                    f"{where} Condition {op_name} {key}: expected a value or list of values, "
                    f"got {brief(raw_values)}"
                )
            values = tuple(
                ("true" if v else "false") if isinstance(v, bool) else str(v) for v in items
            )
            validate_values(operator, values, f"{where} Condition {op_name} {key}")
            out.append(Condition(operator, key, values, if_exists, qualifier))
    return tuple(out)


__all__ = [
    "MAX_JSON_DEPTH",
    "OPERATORS",
    "VERSIONS",
    "brief",
    "json_depth",
    "load_json",
    "parse_policy",
]
