"""Policy grammar: what parses into which model, and one-line errors for what does not."""

from __future__ import annotations

import json

import pytest

from enclavekit.errors import InvalidInput, PolicyDocumentError
from enclavekit.policy import Condition, PrincipalRef, parse_policy


def _doc(**stmt: object) -> dict:
    base = {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}
    base.update(stmt)
    return {"Version": "2012-10-17", "Statement": [base]}


def test_parses_json_text_and_single_statement_object() -> None:
    text = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": {
                "Sid": "A",
                "Effect": "Deny",
                "NotAction": ["kms:*"],
                "NotResource": "arn:x",
            },
        }
    )
    pol = parse_policy(text)
    (s,) = pol.statements
    assert (s.sid, s.effect) == ("A", "Deny")
    assert (s.not_actions, s.not_resources) == (("kms:*",), ("arn:x",))
    assert s.actions is None and s.principals is None and pol.version == "2012-10-17"


def test_principals_are_normalised() -> None:
    pol = parse_policy(
        _doc(
            Principal={
                "AWS": ["111122223333", "arn:aws:iam::1:role/r"],
                "Service": "ec2.amazonaws.com",
            }
        )
    )
    assert pol.statements[0].principals == (
        PrincipalRef("AWS", "arn:aws:iam::111122223333:root"),
        PrincipalRef("AWS", "arn:aws:iam::1:role/r"),
        PrincipalRef("Service", "ec2.amazonaws.com"),
    )
    assert parse_policy(_doc(Principal="*")).statements[0].principals == (PrincipalRef("AWS", "*"),)
    assert parse_policy(_doc(NotPrincipal={"AWS": "*"})).statements[0].not_principals


def test_conditions_with_qualifiers_ifexists_and_typed_values() -> None:
    pol = parse_policy(
        _doc(
            Condition={
                "ForAnyValue:StringLikeIfExists": {"aws:TagKeys": ["a*", "b"]},
                "Bool": {"aws:SecureTransport": True},
                "NumericLessThan": {"kms:X": 5},
            }
        )
    )
    assert pol.statements[0].conditions == (
        Condition("StringLike", "aws:TagKeys", ("a*", "b"), True, "ForAnyValue"),
        Condition("Bool", "aws:SecureTransport", ("true",), False, None),
        Condition("NumericLessThan", "kms:X", ("5",), False, None),
    )


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("{not json", "invalid JSON"),
        ([1], "expected a JSON object"),
        ({"Statement": []}, "non-empty list"),
        ({"Version": "2020-01-01", "Statement": [{}]}, "policy Version"),
        ({"Version": "2012-10-17"}, "Statement element"),
        ({"Statement": [{"Effect": "Allow", "Action": "kms:*"}], "Bogus": 1}, "Bogus"),
        (_doc(Effect="allow"), "Effect: expected Allow or Deny, got 'allow'"),
        (_doc(NotAction="kms:Decrypt"), "Action or NotAction, got both"),
        (_doc(Principal="*", NotPrincipal="*"), "Principal or NotPrincipal"),
        (_doc(Action="Decrypt"), "'service:action', got 'Decrypt'"),
        (_doc(Action=[]), "non-empty string or list"),
        (_doc(Principal={"IAM": "x"}), "got 'IAM'"),
        (_doc(Principal={"AWS": "bob"}), "got 'bob'"),
        (_doc(Condition={"StringEqualz": {"k": "v"}}), "unknown condition operator 'StringEqualz'"),
        (_doc(Condition={"stringequals": {"k": "v"}}), "case-sensitive: StringEquals"),
        (_doc(Condition={"ForSomeValues:StringEquals": {"k": "v"}}), "ForSomeValues"),
        (_doc(Condition={"NullIfExists": {"k": "true"}}), "Null takes no IfExists"),
        (_doc(Condition={"NumericEquals": {"k": "ten"}}), "expected a number value, got 'ten'"),
        (_doc(Condition={"DateLessThan": {"k": "yesterday"}}), "expected a date value"),
        (_doc(Condition={"Bool": {"k": "yes"}}), "expected a bool value"),
        (_doc(Condition={"StringEquals": {"k": {"x": 1}}}), "value or list of values"),
        (_doc(Condition={"StringEquals": "k"}), "object of key"),
        (_doc(Extra=1), "Extra"),
        (
            {"Statement": [{"Effect": "Allow", "Resource": "*"}]},
            "Action or NotAction, found neither",
        ),
    ],
)
def test_bad_documents_raise_one_line_errors(doc: object, needle: str) -> None:
    with pytest.raises(PolicyDocumentError) as info:
        parse_policy(doc)  # type: ignore[arg-type]
    msg = str(info.value)
    assert needle in msg and "\n" not in msg
    assert isinstance(info.value, InvalidInput) and info.value.exit_code == 2
