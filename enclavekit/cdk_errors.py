"""A construct error, as one line: what the user's CDK app raised, and where in their app.

The app runs under `cdk` (synth, deploy, the pytest plugin), so an error raised while the
constructs are built reaches us as a Python traceback inside cdk's output, with jsii frames in
between and the message on its last line. `construct_error` finds that message and the line
of the user's own app that made the construct; `TracebackFilter` replaces the traceback by
that one line in a stream of cdk output (the full traceback only when asked to be verbose).
"""

from __future__ import annotations

import re

_START = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
# The exception line that ends a traceback: a dotted class name, a colon, the message.
_RAISED = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*(?:Error|Exception|Input|Failed)): (?P<msg>.+)$")
# Frames that are not the user's app: the runtime between the app and the construct.
_LIBRARY = ("/site-packages/", "/enclave_constructs/", "/enclavekit/", "<frozen ")
_CALL = re.compile(r"(?P<name>[A-Z]\w*)\(")


def construct_error(output: str) -> str | None:
    """One line for the last Python traceback in `output`, or None if it has none:
    "<message> (construct <Class> at <file>:<line>)"."""
    lines = output.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip() == _START]
    if not starts:
        return None
    return summarize(lines[starts[-1] :])


def summarize(block: list[str]) -> str | None:
    """The one-line form of one traceback (its lines, from "Traceback" on)."""
    message = None
    for ln in block[1:]:
        m = _RAISED.match(ln.strip())
        if m and not ln.startswith(" "):
            message = m.group("msg").strip()
    if message is None:
        return None
    where = None
    for i, ln in enumerate(block):
        m = _FRAME.match(ln)
        if not m or any(part in m.group("path") for part in _LIBRARY):
            continue
        code = block[i + 1].strip() if i + 1 < len(block) else ""
        call = _CALL.findall(code)
        name = f"construct {call[-1]} " if call else ""
        where = f"{name}at {m.group('path').rsplit('/', 1)[-1]}:{m.group('line')}"
    return f"{message} ({where})" if where else message


class TracebackFilter:
    """Feed cdk's output line by line; a Python traceback comes out as its one-line summary
    (`verbose`: unchanged). `error` is the last summary seen."""

    def __init__(self, *, verbose: bool = False) -> None:
        self.verbose = verbose
        self.error: str | None = None
        self._block: list[str] | None = None

    def feed(self, line: str) -> list[str]:
        """The lines to show for `line` (none while a traceback is being collected)."""
        text = line.rstrip("\n")
        if self._block is None:
            if text.strip() != _START:
                return [line]
            self._block = [text]
            return []
        self._block.append(text)
        if _RAISED.match(text.strip()) and not text.startswith(" "):
            return self._flush()
        return []

    def finish(self) -> list[str]:
        """Whatever is still held at the end of the output."""
        return self._flush() if self._block is not None else []

    def _flush(self) -> list[str]:
        block, self._block = self._block or [], None
        summary = summarize(block)
        if summary is not None:
            self.error = summary
        if self.verbose or summary is None:
            return [ln + "\n" for ln in block]
        return [f"error: {summary}\n"]
