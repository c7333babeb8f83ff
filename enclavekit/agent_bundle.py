"""The parent agent as one reproducible zipapp, shipped with the stack (an S3 asset, like the EIF).

Why: enclavekit is not on PyPI, so a real parent cannot `pip install` it; and the agent it runs
must be the code that synthesized the template, not whatever a package index serves that day.
The bundle holds `__main__.py`, a fixed `enclavekit/__init__.py` and, verbatim, the CLI's
`enclavekit/cli/__init__.py` + `enclavekit/cli/agent.py` (one implementation of the
`parent-agent` command line: `__main__` calls `enclavekit.cli.main(groups=(AGENT_CLI,))`) and
every core module they import, found with build-enclave's vendoring (`build.resolve_vendor`):
the agent itself plus pure core modules only. Anything else is refused, and so is any import of
a third-party module other than boto3/botocore (what the parent installs) and the pure modules'
cbor2/cryptography (imported lazily, never on the agent's path: the tests run the bundle with
boto3 and its dependencies only).

Reproducible: entries in sorted order, stored (not deflated, so no zlib version can change the
bytes), dated 1980-01-01, mode 0644, built from the source bytes alone. The same code gives the
same bytes, the same asset hash and so the same user data (no instance replacement).
"""

from __future__ import annotations

import ast
import hashlib
import io
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from enclavekit import build
from enclavekit.errors import InvalidInput

BUNDLE_NAME = "enclavekit-agent.pyz"
AGENT_CLI = "enclavekit.cli.agent"
CLI_FILES = ("cli/__init__.py", "cli/agent.py")  # under the enclavekit package
AGENT_MODULES = ("agent",)  # core modules allowed besides build.PURE_MODULES (parent side)
# What the parent pip-installs for the bundle: boto3 and its whole dependency tree, pinned to
# the versions that synthesized the template (pyproject pins boto3/botocore exactly).
RUNTIME_DISTRIBUTIONS = (
    "boto3",
    "botocore",
    "jmespath",
    "python-dateutil",
    "s3transfer",
    "six",
    "urllib3",
)
_THIRD_PARTY_ON_PARENT = frozenset({"boto3", "botocore"})
_THIRD_PARTY_LAZY = frozenset({"cbor2", "cryptography"})  # pure modules' deps, not the agent's
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644 << 16
MAIN = (
    b'"""enclavekit parent agent: python3 enclavekit-agent.pyz parent-agent --config FILE."""\n'
    b"import sys\n\n"
    b"from enclavekit.cli import main\n\n"
    b'sys.exit(main(groups=("' + AGENT_CLI.encode() + b'",)))\n'
)
PACKAGE_INIT = b'"""enclavekit modules bundled for the parent agent (enclavekit.agent_bundle)."""\n'


@dataclass(frozen=True)
class AgentBundle:
    """The zipapp's bytes, its SHA-256 (rendered into the user data) and its file names."""

    data: bytes = field(repr=False)
    sha256: str
    names: tuple[str, ...]

    def write(self, path: str | Path) -> Path:
        """Write the bundle to `path` (its bytes only; file times are not part of it)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self.data)
        return out


def _imports(source: bytes, where: str) -> list[tuple[str, int]]:
    """(top-level module name, import level) of every import statement, nested ones too."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise InvalidInput(f"agent bundle module {where}: not valid Python ({exc.msg})") from None
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(((node.module or "").split(".")[0], node.level))
    return found


def _check_third_party(name: str, source: bytes) -> None:
    """Only the stdlib, enclavekit, boto3/botocore and the pure modules' lazy deps."""
    third_party = _THIRD_PARTY_ON_PARENT | _THIRD_PARTY_LAZY
    allowed = third_party | {"enclavekit", "__future__"}
    for module, level in _imports(source, name):
        if level:
            raise InvalidInput(
                f"agent bundle module {name}: expected absolute imports only, found a relative "
                f"import (level {level})"
            )
        if module not in allowed and module not in sys.stdlib_module_names:
            raise InvalidInput(
                f"agent bundle module {name} imports {module}; expected only the standard "
                f"library, enclavekit and {', '.join(sorted(third_party))}"
            )


def bundle_files() -> dict[str, bytes]:
    """Archive name -> bytes of everything in the bundle, sorted by name."""
    core = build.core_dir()
    files: dict[str, bytes] = {"__main__.py": MAIN, "enclavekit/__init__.py": PACKAGE_INIT}
    roots: set[str] = set()
    for rel in CLI_FILES:
        path = core / rel
        try:
            data = path.read_bytes()
        except OSError:
            raise InvalidInput(
                f"agent bundle: expected {path} in the installed enclavekit package, found nothing"
            ) from None
        files[f"enclavekit/{rel}"] = data
        for dep in build.imported_core_modules(data.decode("utf-8"), f"enclavekit/{rel}"):
            if dep not in build.PURE_MODULES and dep not in AGENT_MODULES:
                raise InvalidInput(
                    f"agent bundle: enclavekit/{rel} imports enclavekit.{dep}; expected only "
                    f"enclavekit.{', enclavekit.'.join(AGENT_MODULES + build.PURE_MODULES)}"
                )
            roots.add(dep)
    # resolve_vendor refuses any non-pure module imported by the roots (the agent included).
    for short, data in build.resolve_vendor([f"enclavekit.{m}" for m in sorted(roots)]).items():
        files[f"enclavekit/{short}.py"] = data
    for name, data in files.items():
        _check_third_party(name, data)
    return dict(sorted(files.items()))


def build_agent_bundle() -> AgentBundle:
    """The zipapp from the installed enclavekit sources (byte-reproducible)."""
    files = bundle_files()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.create_system = 3  # unix, whatever builds it
            info.external_attr = _FILE_MODE
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, data)
    data = buf.getvalue()
    return AgentBundle(data=data, sha256=hashlib.sha256(data).hexdigest(), names=tuple(files))


def runtime_requirements() -> tuple[str, ...]:
    """`name==version` of the bundle's third-party dependency tree, as installed here."""
    pins = []
    for dist in RUNTIME_DISTRIBUTIONS:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            raise InvalidInput(
                f"agent bundle dependency {dist}: expected it installed with enclavekit (boto3 "
                "and its dependencies), found nothing"
            ) from None
    return tuple(pins)
