"""Examples in the README and docs/cli.md that show measurements or command output are what the
current code gives: they cannot go stale unnoticed.

- every PCR the docs print for the sample image (`build-enclave`'s JSON, `describe-eif | jq`,
  verify's `image-pcrs` and `other-image-denied` details) is, in full or as its shown prefix,
  the PCR of a fresh byte-reproducible build of enclave_app/;
- the `attest verify` examples of docs/cli.md run as printed (on the copy of the real document
  a clone has) and print what the docs show, with the exit status they state.

After a change of enclave_app/ or the build, `ENCLAVEKIT_UPDATE_DOCS=1 pytest
tests/test_docs_examples.py` rewrites the measurements in place (then review the diff).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from enclavekit import eif
from enclavekit.build import build_enclave
from enclavekit.cli import main
from local_backend.verify import variant_image

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "cli.md"]
UPDATE = os.environ.get("ENCLAVEKIT_UPDATE_DOCS") == "1"

# (pattern whose group 1 shows a value, which value it must be)
SHOWN = [
    (re.compile(r'"PCR0": "([0-9a-f]{8,96})…?"'), "PCR0"),
    (re.compile(r'"PCR1": "([0-9a-f]{8,96})…?"'), "PCR1"),
    (re.compile(r'"PCR2": "([0-9a-f]{8,96})…?"'), "PCR2"),
    (re.compile(r"\.Measurements\.PCR0[^\n]*\n([0-9a-f]{96})\n"), "PCR0"),
    (re.compile(r"image-pcrs +PASS +PCR0 ([0-9a-f]{8})… attested"), "PCR0"),
    (re.compile(r"enclave of a different image \(PCR0 ([0-9a-f]{8})…\)"), "variant PCR0"),
]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("docs")
    built = build_enclave(ROOT / "enclave_app", tmp / "app.eif")
    m = eif.read_eif(built.path).measurements
    variant = eif.read_eif(variant_image(built.path, tmp / "variant.eif")).measurements
    return {"PCR0": m.hex(0), "PCR1": m.hex(1), "PCR2": m.hex(2), "variant PCR0": variant.hex(0)}


def test_measurements_in_the_docs_are_the_current_builds(measured: dict[str, str]) -> None:
    stale, seen = [], 0
    for doc in DOCS:
        text = original = doc.read_text()
        for pattern, name in SHOWN:
            for m in list(pattern.finditer(text)):
                seen += 1
                shown, want = m.group(1), measured[name]
                if want.startswith(shown):
                    continue
                stale.append(
                    f"{doc.relative_to(ROOT)}: {name} shown as {shown[:16]}…, "
                    f"a fresh build gives {want[:16]}…"
                )
                text = text.replace(shown, want[: len(shown)])
        if UPDATE and text != original:
            doc.write_text(text)
    assert seen >= 10, f"found only {seen} measurements in {DOCS}: did the examples move?"
    assert not stale or UPDATE, "\n".join(
        [*stale, "(ENCLAVEKIT_UPDATE_DOCS=1 pytest tests/test_docs_examples.py updates them)"]
    )


def _attest_examples() -> list[tuple[str, list[str]]]:
    """(command, printed lines) of each `$ enclavekit attest verify` in docs/cli.md's
    attest verify section, with `$F` as the section sets it."""
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text[text.index("## attest verify") : text.index("## attest show")]
    block = section[section.index("```\n$ ") + 4 :]
    block = block[: block.index("```")]
    variables: dict[str, str] = {}
    examples: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            command = line[2:].split("  #")[0].strip()
            if re.fullmatch(r"\w+=\S+", command):
                name, _, value = command.partition("=")
                variables[name] = value
                continue
            for name, value in variables.items():
                command = command.replace(f"${name}", value)
            examples.append((command, []))
        elif examples:
            examples[-1][1].append(line)
    return examples


def test_attest_verify_examples_print_what_the_docs_show(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the docs' paths are relative to a clone's root
    examples = _attest_examples()
    assert len(examples) >= 3
    for command, printed in examples:
        argv = shlex.split(command)
        assert argv[:3] == ["enclavekit", "attest", "verify"], command
        assert Path(argv[3]).is_file(), f"{command}: the example's document is not in a clone"
        code = main(argv[1:])
        out = capsys.readouterr()
        actual = (out.out + out.err).splitlines()
        shown = [ln for ln in printed if ln.strip() and ln.strip() != "..."]
        expected_code = 0
        for line in shown:
            status = re.search(r"\s+\(exit (\d)\)$", line)
            if status:
                expected_code = int(status.group(1))
                line = line[: status.start()]
            # the time "now" differs on every run: the rest of the line must match
            pattern = re.escape(line.rstrip()).replace(
                r"not\ valid\ at\ 2026\-11\-29T09:31:22\.014Z", r"not\ valid\ at\ \S+"
            )
            assert any(re.fullmatch(pattern, a.rstrip()) for a in actual), (
                f"{command}: docs show {line!r}; it printed:\n" + "\n".join(actual)
            )
        assert code == expected_code, (command, code, actual)
