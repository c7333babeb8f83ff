"""Load CloudFormation templates (JSON, YAML with short-form tags, cdk.out) with resource lines.

Line numbers come from the text itself (a light tokenizer for JSON, the YAML node marks for
YAML), so SARIF can point at the line where each resource starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from enclavekit import yamlsafe
from enclavekit.errors import TemplateError
from enclavekit.policy.parse import MAX_JSON_DEPTH, brief, load_json

# Hostile input bounds. CloudFormation takes template bodies of at most 1 MB; a few MiB leaves
# room for cdk.out files before asset publishing. Nesting and YAML alias expansion are bounded
# so that a billion-laughs file or a 200k-deep document ends in one line, not a hang or a
# RecursionError.
MAX_TEMPLATE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = MAX_JSON_DEPTH
MAX_EXPANDED = 4_000_000  # nodes + scalar characters after YAML aliases are expanded
_NOUN = "a template"  # how the bounds' messages name what was expected


class NotATemplate(TemplateError):
    """JSON/YAML that is not a CloudFormation template (no Resources object)."""


TEMPLATE_SUFFIXES = (".json", ".yaml", ".yml", ".template")
_SKIP_DIRS = ("node_modules", "__pycache__")


@dataclass(frozen=True)
class Resource:
    """One resource of a template, as written (intrinsics unresolved)."""

    logical_id: str
    type: str
    properties: Mapping[str, Any]
    metadata: Mapping[str, Any]
    line: int | None

    @property
    def cdk_path(self) -> str | None:
        path = self.metadata.get("aws:cdk:path")
        return path if isinstance(path, str) else None


@dataclass(frozen=True)
class Template:
    """A parsed template: its file, stack name, body and resources (with their lines)."""

    path: Path
    name: str
    body: Mapping[str, Any] = field(repr=False)
    resources: Mapping[str, Resource] = field(repr=False)
    parent: str | None = None


# ---------------------------------------------------------------- YAML with CFN short forms
class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns `!Ref x` into `{"Ref": x}` and the like."""


def _short_form(tag: str) -> Any:
    name = "Ref" if tag == "Ref" else ("Condition" if tag == "Condition" else f"Fn::{tag}")

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if tag == "GetAtt" and isinstance(value, str):
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {name: value}

    return construct


_TAGS = (
    "Ref Condition Base64 Cidr FindInMap GetAtt GetAZs ImportValue Join Select Split Sub "
    "Transform And Equals If Not Or Length ToJsonString"
)
for _tag in _TAGS.split():
    _CfnLoader.add_constructor(f"!{_tag}", _short_form(_tag))
# YAML 1.1 would turn "2012-10-17" into a date, "0x1f" and "000" into numbers; CloudFormation
# and IAM want the text as written, so plain scalars other than booleans and null stay strings.
_KEEP = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:null")
_CfnLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag in _KEEP]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_load(text: str, where: str) -> tuple[Any, dict[str, int]]:
    loader: _CfnLoader | None = None
    try:
        yamlsafe.check_depth(
            text, where, loader=_CfnLoader, max_depth=MAX_DEPTH, error=TemplateError, noun=_NOUN
        )
        loader = _CfnLoader(text)
        node = loader.get_single_node()
        if node is not None:
            yamlsafe.check_expanded(
                node,
                where,
                max_depth=MAX_DEPTH,
                max_expanded=MAX_EXPANDED,
                error=TemplateError,
                noun=_NOUN,
            )
        body = loader.construct_document(node) if node is not None else None
    except TemplateError:
        raise
    except yaml.YAMLError as exc:
        raise TemplateError(
            f"{where}: expected a JSON or YAML template, YAML error: "
            + " ".join(str(exc).split())[:300]
        ) from exc
    except (ValueError, TypeError, OverflowError) as exc:  # explicit tags (!!int, !!binary...)
        raise TemplateError(
            f"{where}: expected a CloudFormation template, YAML value error: "
            + " ".join(str(exc).split())[:200]
        ) from None
    except RecursionError:  # belt and braces: the bounds above should have caught it
        raise TemplateError(
            f"{where}: expected a template of bounded depth, found one nested too deeply"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "Resources" and isinstance(value, yaml.MappingNode):
                for rkey, _ in value.value:
                    if isinstance(rkey, yaml.ScalarNode):
                        lines[str(rkey.value)] = rkey.start_mark.line + 1
    return body, lines


# ---------------------------------------------------------------- JSON resource lines
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def _json_resource_lines(text: str) -> dict[str, int]:
    """Line of each key of the top-level "Resources" object, by one linear token scan."""
    lines: dict[str, int] = {}
    depth = 0
    in_resources = False
    line = 1
    last = 0
    for match in _TOKEN.finditer(text):
        tok = match.group()
        ch = tok[0]
        if ch in "{[":
            depth += 1
            continue
        if ch in "}]":
            depth -= 1
            continue
        end = match.end()
        if not text[end : end + 16].lstrip().startswith(":"):
            continue  # a value, not a key
        if depth == 1:
            in_resources = tok == '"Resources"'
        elif depth == 2 and in_resources:
            line += text.count("\n", last, match.start())
            last = match.start()
            lines[json.loads(tok)] = line
    return lines


# ---------------------------------------------------------------- public loading
def parse_template(
    text: str, path: Path, name: str | None = None, parent: str | None = None
) -> Template:
    """Parse template text (JSON or YAML) into a Template; TemplateError names what is wrong."""
    where = str(path)
    if len(text) > MAX_TEMPLATE_BYTES:
        raise TemplateError(
            f"{where}: expected a template of at most {MAX_TEMPLATE_BYTES} characters "
            f"(CloudFormation accepts 1 MB), found {len(text)}"
        )
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            body = load_json(text, "JSON")
        except json.JSONDecodeError as exc:
            raise TemplateError(
                f"{where}: expected a JSON template, found invalid JSON at line {exc.lineno} "
                f"column {exc.colno}: {exc.msg}"
            ) from exc
        except ValueError as exc:  # too deep, or a number json refuses to convert
            reason = " ".join(str(exc).split())[:200]
            raise TemplateError(f"{where}: expected a JSON template, {reason}") from None
        lines = _json_resource_lines(text)
    else:
        body, lines = _yaml_load(text, where)
    if not isinstance(body, dict):
        raise NotATemplate(
            f"{where}: expected a template object with a Resources section, "
            f"found {type(body).__name__}"
        )
    raw_resources = body.get("Resources")
    if not isinstance(raw_resources, dict):
        raise (TemplateError if "Resources" in body else NotATemplate)(
            f"{where}: expected a 'Resources' object, found {type(raw_resources).__name__}"
        )
    resources: dict[str, Resource] = {}
    for logical_id, res in raw_resources.items():
        if not isinstance(res, dict) or not isinstance(res.get("Type"), str):
            raise TemplateError(
                f"{where}: resource {brief(logical_id)}: expected an object with a string 'Type', "
                f"found {brief(res)}"
            )
        props = res.get("Properties") or {}
        meta = res.get("Metadata") or {}
        if not isinstance(props, dict) or not isinstance(meta, dict):
            raise TemplateError(
                f"{where}: resource {brief(logical_id)}: expected objects for Properties and "
                "Metadata"
            )
        resources[str(logical_id)] = Resource(
            str(logical_id), res["Type"], props, meta, lines.get(str(logical_id))
        )
    return Template(path, name or _stack_name(path), body, resources, parent)


def _stack_name(path: Path) -> str:
    name = path.name
    for suffix in (".template.json", ".template.yaml", ".json", ".yaml", ".yml", ".template"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_template(path: Path, name: str | None = None, parent: str | None = None) -> Template:
    """Read and parse one template file."""
    try:
        size = path.stat().st_size
        if size > MAX_TEMPLATE_BYTES:
            raise TemplateError(
                f"{path}: expected a template of at most {MAX_TEMPLATE_BYTES} bytes "
                f"(CloudFormation accepts 1 MB), found {size}"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TemplateError(f"{path}: expected a template file, found nothing there") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: expected a readable UTF-8 template, {exc}") from exc
    return parse_template(text, path, name, parent)


def _nested(template: Template, base: Path, seen: set[Path]) -> Iterable[Template]:
    """Nested stacks next to the parent: CDK's Metadata aws:asset:path, or a TemplateURL that
    names a local file (what `aws cloudformation package` uploads)."""
    for res in template.resources.values():
        if res.type != "AWS::CloudFormation::Stack":
            continue
        asset = res.metadata.get("aws:asset:path")
        url = res.properties.get("TemplateURL")
        if not isinstance(asset, str):
            asset = url if isinstance(url, str) and "://" not in url else None
        if not isinstance(asset, str) or len(asset) > 4096:
            continue
        try:
            child = (base / asset).resolve()
            if child in seen or not child.is_file():
                continue
        except (OSError, ValueError):
            continue
        seen.add(child)
        tpl = load_template(child, name=f"{template.name}/{res.logical_id}", parent=template.name)
        yield tpl
        yield from _nested(tpl, child.parent, seen)


def _looks_like_template(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:65536]
    except OSError:
        return False
    return "AWSTemplateFormatVersion" in head or "Resources" in head


def load_directory(
    directory: Path, seen: set[Path], skip_non_templates: bool = True
) -> list[Template]:
    """A cdk.out (it has manifest.json) or a directory of plain templates, in path order;
    JSON/YAML files that are not templates are skipped."""
    if (directory / "manifest.json").is_file():
        return load_cloud_assembly(directory, seen)
    out: list[Template] = []
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.suffix.lower() in TEMPLATE_SUFFIXES
        and p.is_file()
        and not any(
            part.startswith(".") or part in _SKIP_DIRS for part in p.relative_to(directory).parts
        )
    )
    for path in files:
        resolved = path.resolve()
        if resolved in seen:
            continue
        try:
            tpl = load_template(path)
        except NotATemplate:
            continue
        except TemplateError:
            if skip_non_templates and not _looks_like_template(path):
                continue
            raise
        seen.add(resolved)
        out.append(tpl)
        out.extend(_nested(tpl, path.parent, seen))
    if not out:
        raise TemplateError(
            f"{directory}: expected a cdk.out directory or a directory of templates, found "
            "no template in it"
        )
    return out


def load_cloud_assembly(directory: Path, seen: set[Path] | None = None) -> list[Template]:
    """Every stack template of a cdk.out (nested assemblies and nested stacks included)."""
    seen = set() if seen is None else seen
    manifest_path = directory / "manifest.json"
    try:
        manifest = load_json(manifest_path.read_text(encoding="utf-8"), "JSON")
    except FileNotFoundError as exc:
        raise TemplateError(
            f"{directory}: expected a cdk.out directory with manifest.json, found none"
        ) from exc
    except (OSError, ValueError) as exc:
        reason = (str(exc).splitlines() or ["?"])[0][:200]
        raise TemplateError(
            f"{manifest_path}: expected a cloud assembly manifest, {reason}"
        ) from None
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(artifacts, dict):
        raise TemplateError(f"{manifest_path}: expected an 'artifacts' object in the manifest")
    out: list[Template] = []
    for art_id, art in artifacts.items():
        if not isinstance(art, dict):
            continue
        props = art.get("properties") or {}
        if art.get("type") == "aws:cloudformation:stack":
            tfile = props.get("templateFile")
            if not isinstance(tfile, str):
                raise TemplateError(f"{manifest_path}: stack {art_id!r} has no templateFile")
            path = (directory / tfile).resolve()
            if path in seen:
                continue
            seen.add(path)
            tpl = load_template(path, name=str(props.get("stackName") or art_id))
            out.append(tpl)
            out.extend(_nested(tpl, directory, seen))
        elif art.get("type") == "cdk:cloud-assembly":
            sub = props.get("directoryName")
            if isinstance(sub, str):
                out.extend(load_cloud_assembly(directory / sub, seen))
    return out


def load_paths(paths: Iterable[str | Path], skip_non_templates: bool = False) -> list[Template]:
    """Templates from cdk.out directories, directories of templates and template files.

    `skip_non_templates`: files that are JSON/YAML but not templates are passed over (what a
    pre-commit hook given every changed YAML file needs) instead of being an error.
    """
    out: list[Template] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(load_directory(path, seen))
        elif path.is_file():
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                tpl = load_template(path)
            except NotATemplate:
                if skip_non_templates:
                    continue
                raise
            except TemplateError:
                if skip_non_templates and not _looks_like_template(path):
                    continue
                raise
            out.append(tpl)
            out.extend(_nested(tpl, path.parent, seen))
        else:
            raise TemplateError(
                f"{path}: expected a cdk.out directory or a template file, found nothing there"
            )
    if not out and not skip_non_templates:
        names = ", ".join(map(str, paths))
        raise TemplateError(f"{names}: expected at least one template, found none")
    return out
