"""JUnit XML: one suite per template, one test case per rule; unacknowledged errors fail it,
warnings and acknowledged findings are listed in its system-out."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from enclavekit.lint.model import Finding, Report, Severity


def _line(f: Finding) -> str:
    loc = f.location
    where = f"{loc.logical_id or '-'}" + (f" (line {loc.line})" if loc.line else "")
    ack = f" [acknowledged: {f.reason}]" if f.acknowledged else ""
    return f"{f.severity.value} {f.rule_id} {where}: {f.message}{ack}"


def render(report: Report) -> str:
    root = ET.Element("testsuites", name="enclavekit lint")
    total_tests = total_failures = 0
    for template in report.templates:
        mine = [f for f in report.findings if f.location.template == template]
        suite = ET.SubElement(root, "testsuite", name=template)
        failures = 0
        for rule in report.rules:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"enclavekit.lint.{template}",
                name=f"{rule.id} {rule.title}",
            )
            found = [f for f in mine if f.rule_id == rule.id]
            failing = [f for f in found if f.severity is Severity.ERROR and not f.acknowledged]
            if failing:
                failures += 1
                fail = ET.SubElement(case, "failure", message=failing[0].message, type="error")
                fail.text = "\n".join(_line(f) for f in failing) + f"\nFix: {rule.fix}"
            other = [f for f in found if f not in failing]
            if other:
                ET.SubElement(case, "system-out").text = "\n".join(_line(f) for f in other)
        suite.set("tests", str(len(report.rules)))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        total_tests += len(report.rules)
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    root.set("errors", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
