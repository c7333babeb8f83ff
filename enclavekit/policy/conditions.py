"""Condition operators with AWS's semantics.

Rules (IAM User Guide, "Condition operators" and "Multivalued context keys"):
- values listed for one key are ORed; keys and operators of one block are ANDed;
- a missing key makes positive operators false and negated operators (`...Not...`) true;
- `...IfExists` is true when the key is missing; `Null` tests presence;
- `ForAllValues:` is true on a missing/empty key, `ForAnyValue:` false;
- key names are case-insensitive.
"""

from __future__ import annotations

import base64
import ipaddress
import operator as op
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache

from enclavekit.errors import PolicyDocumentError

from .model import Condition

Matcher = Callable[[str, str], bool]  # (request value, policy value) -> match


@lru_cache(maxsize=4096)
def glob_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """`*` = any run of characters, `?` = one character, everything else literal."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def glob_match(pattern: str, value: str, ignore_case: bool = False) -> bool:
    return glob_regex(pattern, ignore_case).match(value) is not None


def _num(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def parse_date(s: str) -> datetime | None:
    """ISO 8601 (with or without zone; Z accepted) or epoch seconds -> aware datetime."""
    s = s.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", s):
        return datetime.fromtimestamp(float(s), UTC)
    try:
        d = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _compare(
    parse: Callable[[str], object | None], cmp: Callable[[object, object], bool]
) -> Matcher:
    def match(req: str, pol: str) -> bool:
        a, b = parse(req), parse(pol)
        return a is not None and b is not None and cmp(a, b)

    return match


def _arn_like(req: str, pol: str) -> bool:
    rp, pp = req.split(":", 5), pol.split(":", 5)
    if len(pp) != 6 or len(rp) != 6:
        return False
    return all(glob_match(p, r) for p, r in zip(pp, rp, strict=True))


def _bool(req: str, pol: str) -> bool:
    return req.lower() == pol.lower()


def _binary(req: str, pol: str) -> bool:
    try:
        return base64.b64decode(req) == base64.b64decode(pol)
    except ValueError:
        return req == pol


def _ip(req: str, pol: str) -> bool:
    try:
        return ipaddress.ip_address(req) in ipaddress.ip_network(pol, strict=False)
    except ValueError:
        return False


# operator name -> (matcher, negated, value kind for validation)
OPERATORS: dict[str, tuple[Matcher, bool, str]] = {
    "StringEquals": (lambda r, p: r == p, False, "string"),
    "StringNotEquals": (lambda r, p: r == p, True, "string"),
    "StringEqualsIgnoreCase": (lambda r, p: r.casefold() == p.casefold(), False, "string"),
    "StringNotEqualsIgnoreCase": (lambda r, p: r.casefold() == p.casefold(), True, "string"),
    "StringLike": (lambda r, p: glob_match(p, r), False, "string"),
    "StringNotLike": (lambda r, p: glob_match(p, r), True, "string"),
    "NumericEquals": (_compare(_num, op.eq), False, "number"),
    "NumericNotEquals": (_compare(_num, op.eq), True, "number"),
    "NumericLessThan": (_compare(_num, op.lt), False, "number"),
    "NumericLessThanEquals": (_compare(_num, op.le), False, "number"),
    "NumericGreaterThan": (_compare(_num, op.gt), False, "number"),
    "NumericGreaterThanEquals": (_compare(_num, op.ge), False, "number"),
    "DateEquals": (_compare(parse_date, op.eq), False, "date"),
    "DateNotEquals": (_compare(parse_date, op.eq), True, "date"),
    "DateLessThan": (_compare(parse_date, op.lt), False, "date"),
    "DateLessThanEquals": (_compare(parse_date, op.le), False, "date"),
    "DateGreaterThan": (_compare(parse_date, op.gt), False, "date"),
    "DateGreaterThanEquals": (_compare(parse_date, op.ge), False, "date"),
    "Bool": (_bool, False, "bool"),
    "BinaryEquals": (_binary, False, "string"),
    "IpAddress": (_ip, False, "ip"),
    "NotIpAddress": (_ip, True, "ip"),
    "ArnEquals": (_arn_like, False, "string"),
    "ArnLike": (_arn_like, False, "string"),
    "ArnNotEquals": (_arn_like, True, "string"),
    "ArnNotLike": (_arn_like, True, "string"),
    "Null": (_bool, False, "bool"),
}
_BY_LOWER = {name.lower(): name for name in OPERATORS}


def parse_operator(name: str, where: str) -> tuple[str | None, str, bool]:
    """ "ForAnyValue:StringLikeIfExists" -> ("ForAnyValue", "StringLike", True)."""
    qualifier: str | None = None
    rest = name
    if ":" in name:
        prefix, rest = name.split(":", 1)
        if prefix not in ("ForAnyValue", "ForAllValues"):
            raise PolicyDocumentError(
                f"{where} Condition: expected set operator ForAnyValue or ForAllValues, "
                f"got {prefix!r} in {name!r}"
            )
        qualifier = prefix
    if_exists = rest.endswith("IfExists") and rest != "IfExists"
    base = rest[: -len("IfExists")] if if_exists else rest
    if base not in OPERATORS:
        hint = _BY_LOWER.get(base.lower())
        raise PolicyDocumentError(
            f"{where} Condition: unknown condition operator {name!r}"
            + (f" (operators are case-sensitive: {hint})" if hint else "")
        )
    if base == "Null" and (if_exists or qualifier):
        raise PolicyDocumentError(
            f"{where} Condition: Null takes no IfExists or set operator, got {name!r}"
        )
    return qualifier, base, if_exists


def validate_values(operator: str, values: tuple[str, ...], where: str) -> None:
    """Reject policy values the operator can never compare (AWS rejects them too)."""
    kind = OPERATORS[operator][2]
    for v in values:
        bad = (
            (kind == "number" and _num(v) is None)
            or (kind == "date" and parse_date(v) is None)
            or (kind == "bool" and v.lower() not in ("true", "false"))
            or (kind == "ip" and not _valid_network(v))
        )
        if bad:
            raise PolicyDocumentError(f"{where}: expected a {kind} value, got {v!r}")


def _valid_network(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        return False
    return True


def condition_matches(cond: Condition, keys: Mapping[str, str | tuple[str, ...]]) -> bool:
    """One condition against the request's keys (already lower-cased names)."""
    value = keys.get(cond.key.lower())
    matcher, negated, _ = OPERATORS[cond.operator]
    if cond.operator == "Null":
        absent = value is None or value == ()
        return any(absent == (v.lower() == "true") for v in cond.values)
    if value is None or value == ():
        if cond.if_exists:
            return True
        if cond.qualifier == "ForAllValues":
            return True
        if cond.qualifier == "ForAnyValue":
            return False
        return negated

    def hit(req: str) -> bool:
        """Does this one request value satisfy the operator (with negation)?"""
        found = any(matcher(req, pol) for pol in cond.values)
        return not found if negated else found

    requested = (value,) if isinstance(value, str) else value
    if cond.qualifier == "ForAllValues":
        return all(hit(r) for r in requested)
    if cond.qualifier == "ForAnyValue":
        return any(hit(r) for r in requested)
    if negated:  # no request value may match any policy value
        return all(hit(r) for r in requested)
    return any(hit(r) for r in requested)


def conditions_match(
    conditions: tuple[Condition, ...], keys: Mapping[str, str | tuple[str, ...]]
) -> bool:
    """All conditions (ANDed)."""
    return all(condition_matches(c, keys) for c in conditions)


__all__ = [
    "OPERATORS",
    "condition_matches",
    "conditions_match",
    "glob_match",
    "parse_date",
    "parse_operator",
    "validate_values",
]
