"""`enclavekit demo` (what `make demo` runs): the seed scenario, deployed locally and proven.

`enclavekit up` on the project's sample app (endpoint, synth, bootstrap, deploy, boot, seal,
verify), then the measurements each enclave host was built with and the key policies bound to
them, read from the cloud assembly, and how to try the service by hand. The endpoint is left
running for that; `enclavekit local stop` stops it and everything it started.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from enclavekit.attested_kms import condition_name, pcr_index
from enclavekit.cli import backend
from enclavekit.cli.common import command
from enclavekit.contract import DEFAULT_STATE_DIR
from enclavekit.contract import HOST_METADATA_KEY as HOST_METADATA
from enclavekit.errors import CheckFailed, InvalidInput, TemplateError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `demo`."""
    p = command(sub, "demo", _demo)
    p.add_argument("--project", default=".", help="directory holding cdk.json (default: .)")
    p.add_argument("--state-dir", default=None, help="default: PROJECT/.enclavekit")
    p.add_argument("--port", type=int, default=4599)


def _demo(args: argparse.Namespace) -> int:
    """deploy the sample app locally (enclavekit up) and verify it end to end"""
    loop = backend.up_loop()
    project = Path(args.project).resolve()
    if not (project / "cdk.json").is_file():
        raise InvalidInput(f"--project must be a directory with cdk.json, got {args.project!r}")
    state_dir = Path(args.state_dir).resolve() if args.state_dir else project / DEFAULT_STATE_DIR
    result = loop.up(project, state_dir=state_dir, port=args.port)
    rows = hosts_in_assembly(project / "cdk.out")
    if not rows:
        raise CheckFailed(
            f"cloud assembly {project / 'cdk.out'}: expected enclave hosts, found none"
        )
    print()
    print(render(rows))
    print("\n" + loop.phases_table(result))
    assert result.report is not None
    print("\n" + result.report.table())
    print()
    for line in loop.try_it_lines(state_dir, result.stacks, command=".venv/bin/enclavekit"):
        print(line)
    print(f"Stop it: .venv/bin/enclavekit local stop --state-dir {state_dir}")
    return 0 if result.ok else 1


def _templates(assembly: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        manifest = json.loads((assembly / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TemplateError(
            f"cloud assembly {assembly}: expected manifest.json, found {exc}"
        ) from None
    found = []
    for name, art in (manifest.get("artifacts") or {}).items():
        if art.get("type") != "aws:cloudformation:stack":
            continue
        path = assembly / art["properties"]["templateFile"]
        try:
            found.append((name, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            raise TemplateError(f"template {path}: expected JSON, found {exc}") from None
    return found


def hosts_in_assembly(assembly: Path) -> list[dict[str, Any]]:
    """One row per enclave host: its Metadata and, per attested key, the policy conditions."""
    rows = []
    for stack, template in _templates(assembly):
        resources = template.get("Resources") or {}
        for logical_id, res in resources.items():
            meta = (res.get("Metadata") or {}).get(HOST_METADATA)
            if not isinstance(meta, dict):
                continue
            keys = []
            for key_id in meta.get("attested_keys", []):
                policy = (resources.get(key_id) or {}).get("Properties", {}).get("KeyPolicy", {})
                keys.append({"key": key_id, **_bindings(policy)})
            rows.append(
                {
                    "stack": stack,
                    "host": logical_id,
                    "type": res.get("Type"),
                    "meta": meta,
                    "keys": keys,
                }
            )
    return rows


def _bindings(policy: dict[str, Any]) -> dict[str, Any]:
    """The attestation values an Allow requires, and the attestation keys Denies guard."""
    allow: dict[str, str] = {}
    denied: list[str] = []
    for s in policy.get("Statement", []):
        for op, block in (s.get("Condition") or {}).items():
            for k, v in block.items():
                name = condition_name(k)
                if name is None:
                    continue
                if s.get("Effect") == "Allow" and op.startswith("StringEquals"):
                    allow[name] = v if isinstance(v, str) else ",".join(v)
                elif s.get("Effect") == "Deny" and op.startswith("StringNotEquals"):
                    denied.append(name)
    return {"allow": allow, "deny": sorted(set(denied))}


def render(rows: list[dict[str, Any]]) -> str:
    """Two plain tables: measurements per host, then the key bindings and whether they match."""
    lines = ["", "Enclave hosts and their image measurements"]
    lines.append(f"{'stack/host':<46} {'image':<18} {'enclave':<16} {'PCR':<4} value")
    for r in rows:
        m = r["meta"]
        image = m.get("image") or {}
        enc = m.get("enclave", {})
        where = f"{r['stack']}/{r['host']}"
        sizes = f"{enc.get('cpu_count')} vCPU {enc.get('memory_mib')} MiB"
        name = image.get("name", "(ACM agent)") + (" DEBUG" if image.get("debug") else "")
        pcrs = sorted((image.get("measurements") or {}).items()) or [("-", "-")]
        for i, (pcr, value) in enumerate(pcrs):
            head = (where, name, sizes) if i == 0 else ("", "", "")
            lines.append(f"{head[0]:<46} {head[1]:<18} {head[2]:<16} {pcr[3:]:<4} {value}")
    lines += [
        "",
        "KMS keys bound to them (Allow requires, Deny guards; 'match' = equals the image)",
    ]
    lines.append(f"{'host':<30} {'key':<28} {'condition':<12} {'match':<6} deny-unattested")
    for r in rows:
        measured = (r["meta"].get("image") or {}).get("measurements", {})
        if not r["keys"]:
            lines.append(f"{r['host']:<30} {'(none)':<28}")
        for k in r["keys"]:
            for name, value in sorted(k["allow"].items()):
                expect = measured.get(f"PCR{pcr_index(name)}")
                match = "yes" if expect and expect.lower() == str(value).lower() else "NO"
                guarded = "yes" if name in k["deny"] else "NO"
                lines.append(f"{r['host']:<30} {k['key']:<28} {name:<12} {match:<6} {guarded}")
    return "\n".join(lines)
