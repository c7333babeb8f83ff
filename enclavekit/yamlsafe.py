"""YAML from people and tools we do not trust: bounded before PyYAML builds anything.

The one bounding mechanism for every YAML we read (the linter's templates, user data, the
vsock-proxy allowlist). PyYAML's composer and constructor recurse once per nesting level (a few
thousand `[` end in RecursionError, and take seconds to get there) and expand aliases by
reference (a "billion laughs" document is small in memory but explodes when walked). So:
  1. `check_depth`: nesting depth from the event stream, which the parser produces without
     recursion;
  2. `check_expanded`: the size and depth of the composed node graph once aliases are expanded,
     computed with memoisation, so an alias bomb costs what its text costs; recursive aliases
     are refused;
and only then is the document constructed.
"""

from __future__ import annotations

from typing import Any

import yaml

from enclavekit.errors import InvalidInput

MAX_DEPTH = 64
MAX_EXPANDED = 1_000_000  # nodes + scalar characters after YAML aliases are expanded


def check_depth(
    text: str,
    where: str,
    *,
    loader: type[yaml.SafeLoader] = yaml.SafeLoader,
    max_depth: int = MAX_DEPTH,
    error: type[InvalidInput] = InvalidInput,
    noun: str = "YAML",
) -> None:
    """Refuse nesting deeper than `max_depth` (`error`: "{where}: expected {noun} nested …")."""
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                raise error(
                    f"{where}: expected {noun} nested at most {max_depth} levels deep, "
                    f"found more (line {event.start_mark.line + 1})"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def check_expanded(
    node: yaml.Node,
    where: str,
    *,
    max_depth: int = MAX_DEPTH,
    max_expanded: int = MAX_EXPANDED,
    error: type[InvalidInput] = InvalidInput,
    noun: str = "YAML",
) -> int:
    """Size of the document once aliases are expanded (nodes + scalar characters); `error`
    past `max_expanded`, past `max_depth` once expanded, or on a recursive alias."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (size, depth)
    active: set[int] = set()
    too_deep = (
        f"{where}: expected {noun} nested at most {max_depth} levels deep once YAML aliases "
        "are expanded, found more"
    )

    def walk(n: yaml.Node, level: int) -> tuple[int, int]:
        key = id(n)
        if key in memo:
            size, depth = memo[key]
        else:
            if key in active:
                raise error(f"{where}: expected {noun}, found a recursive YAML alias")
            if level > max_depth:
                raise error(too_deep)
            active.add(key)
            size, depth = 1, 0
            if isinstance(n, yaml.ScalarNode):
                size += len(n.value)
            else:
                children = (
                    n.value
                    if isinstance(n, yaml.SequenceNode)
                    else [c for pair in n.value for c in pair]
                )
                for child in children:
                    csize, cdepth = walk(child, level + 1)
                    size += csize
                    depth = max(depth, cdepth + 1)
                    if size > max_expanded:
                        break
            active.discard(key)
            memo[key] = (size, depth)
        if size > max_expanded:
            raise error(
                f"{where}: expected {noun} whose YAML aliases expand to at most "
                f"{max_expanded} nodes and characters, found more (an alias bomb?)"
            )
        if level + depth > max_depth:
            raise error(too_deep)
        return size, depth

    return walk(node, 0)[0]


def load(
    text: str, *, what: str, max_depth: int = MAX_DEPTH, max_expanded: int = MAX_EXPANDED
) -> Any:
    """`yaml.safe_load(text)`, refusing deep nesting and alias bombs with one-line errors."""
    try:
        check_depth(text, what, max_depth=max_depth)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            check_expanded(node, what, max_depth=max_depth, max_expanded=max_expanded)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise InvalidInput(f"{what}: expected YAML, found {reason}") from None
    except RecursionError:
        raise InvalidInput(f"{what}: expected YAML, found nesting too deep to read") from None
