"""JUnit XML: one suite per template, one test case per rule; unacknowledged errors fail it,
warnings and acknowledged findings are listed in its system-out.

`document` is the one JUnit writer of the project (ElementTree, so every message is escaped):
lint's report below and `enclavekit verify --junit` both render through it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from enclavekit.lint.model import Finding, Report, Severity


@dataclass(frozen=True)
class Case:
    """One test case: passed unless `failure` (its message) or `skipped` (why) is set."""

    classname: str
    name: str
    failure: str | None = None
    failure_text: str | None = None  # the failure's body
    skipped: str | None = None
    output: str | None = None  # system-out
    seconds: float | None = None


def document(name: str, suites: Sequence[tuple[str, Sequence[Case]]]) -> str:
    """A `<testsuites>` document of named suites of cases, with their counts."""
    root = ET.Element("testsuites", name=name)
    total_tests = total_failures = 0
    for suite_name, cases in suites:
        suite = ET.SubElement(root, "testsuite", name=suite_name)
        for c in cases:
            case = ET.SubElement(suite, "testcase", classname=c.classname, name=c.name)
            if c.seconds is not None:
                case.set("time", f"{c.seconds:.3f}")
            if c.failure is not None:
                fail = ET.SubElement(case, "failure", message=c.failure, type="error")
                fail.text = c.failure_text
            elif c.skipped is not None:
                ET.SubElement(case, "skipped", message=c.skipped)
            if c.output:
                ET.SubElement(case, "system-out").text = c.output
        failures = sum(c.failure is not None for c in cases)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        skipped = sum(c.failure is None and c.skipped is not None for c in cases)
        if skipped:
            suite.set("skipped", str(skipped))
        total_tests += len(cases)
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _line(f: Finding) -> str:
    loc = f.location
    where = f"{loc.logical_id or '-'}" + (f" (line {loc.line})" if loc.line else "")
    ack = f" [acknowledged: {f.reason}]" if f.acknowledged else ""
    return f"{f.severity.value} {f.rule_id} {where}: {f.message}{ack}"


def _case(template: str, rule_id: str, title: str, fix: str, found: list[Finding]) -> Case:
    failing = [f for f in found if f.severity is Severity.ERROR and not f.acknowledged]
    other = [f for f in found if f not in failing]
    return Case(
        classname=f"enclavekit.lint.{template}",
        name=f"{rule_id} {title}",
        failure=failing[0].message if failing else None,
        failure_text="\n".join(_line(f) for f in failing) + f"\nFix: {fix}" if failing else None,
        output="\n".join(_line(f) for f in other) or None,
    )


def render(report: Report) -> str:
    suites = []
    for template in report.templates:
        mine = [f for f in report.findings if f.location.template == template]
        cases = [
            _case(template, r.id, r.title, r.fix, [f for f in mine if f.rule_id == r.id])
            for r in report.rules
        ]
        suites.append((template, cases))
    return document("enclavekit lint", suites)
