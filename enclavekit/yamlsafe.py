"""YAML from people and tools we do not trust: bounded before PyYAML builds anything.

PyYAML's safe loader still recurses once per nesting level (a few thousand `[` end in
RecursionError, and take seconds to get there) and expands aliases by reference (a "billion
laughs" document is small in memory but explodes when walked). So the token stream, which the
scanner produces without recursion, is checked first: nesting depth and alias count bounded.
"""

from __future__ import annotations

from typing import Any

import yaml

from enclavekit.errors import InvalidInput

MAX_DEPTH = 64
MAX_ALIASES = 100
_OPEN = (
    yaml.FlowSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.BlockMappingStartToken,
)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def load(
    text: str, *, what: str, max_depth: int = MAX_DEPTH, max_aliases: int = MAX_ALIASES
) -> Any:
    """`yaml.safe_load(text)`, refusing deep nesting and alias bombs with one-line errors."""
    depth = aliases = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, _OPEN):
                depth += 1
                if depth > max_depth:
                    raise InvalidInput(
                        f"{what}: expected YAML nested at most {max_depth} levels deep, "
                        "found deeper nesting"
                    )
            elif isinstance(token, _CLOSE):
                depth -= 1
            elif isinstance(token, yaml.AliasToken):
                aliases += 1
                if aliases > max_aliases:
                    raise InvalidInput(
                        f"{what}: expected YAML with at most {max_aliases} aliases (*name), "
                        "found more (an alias bomb?)"
                    )
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise InvalidInput(f"{what}: expected YAML, found {reason}") from None
    except RecursionError:
        raise InvalidInput(f"{what}: expected YAML, found nesting too deep to read") from None
