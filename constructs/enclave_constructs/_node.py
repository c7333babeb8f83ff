"""Put the project's Node.js 22 under jsii before aws_cdk starts its kernel process.

jsii starts `node` when aws_cdk is first imported; on an end-of-life Node it prints a banner on
every run. JSII_NODE names the binary it starts, so setting it (and PATH, for the tools that
aws-cdk-lib itself spawns) before that import is enough. A caller's own JSII_NODE wins.
"""

from __future__ import annotations

import os

from enclavekit.toolchain import node_modules, tool_path


def use_project_node() -> None:
    """Point JSII_NODE and PATH at node_modules/node when the project's Node.js is installed."""
    nm = node_modules()
    if nm is None or not (nm / "node" / "bin" / "node").exists():
        return
    os.environ.setdefault("JSII_NODE", str(nm / "node" / "bin" / "node"))
    first = str(nm / "node" / "bin")
    if not os.environ.get("PATH", "").startswith(first + os.pathsep):
        os.environ["PATH"] = tool_path()
