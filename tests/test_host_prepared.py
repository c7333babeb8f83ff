"""Prepared results (`local_backend.host.prepared`): a host's `python3.11 -m venv` and
`pip install` of exactly the agent's pins get the files a real run wrote, and anything else —
another pin, a venv that changed since — runs for real and fails or succeeds as pip does."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from host_support import booted, console, construct_host_spec

from enclavekit.agent_bundle import runtime_requirements
from local_backend.host import prepared

RECIPE_FLAGS = " ".join(prepared.AGENT_PIP_FLAGS)


def test_only_the_two_kept_command_forms_are_looked_up() -> None:
    venv_prefix, base = "/opt/v", "/usr"
    assert prepared.form(["python3.11", "-m", "venv", "/opt/v"], base, base) == "venv"
    pip = ["/opt/v/bin/python3.11", "/opt/v/bin/pip", "install"]
    assert prepared.form([*pip, "--no-cache-dir", "a==1"], venv_prefix, base) == "pip"
    # pip that writes ~/.cache, pip outside a venv, other verbs: never kept
    assert prepared.form([*pip, "a==1"], venv_prefix, base) is None
    assert prepared.form([*pip, "--no-cache-dir", "a==1"], base, base) is None
    assert (
        prepared.form(["/opt/v/bin/python3.11", "/opt/v/bin/pip", "freeze"], venv_prefix, base)
        is None
    )
    assert prepared.form(["python3.11", "-c", "pass"], base, base) is None


def test_the_recipe_is_what_our_constructs_user_data_runs() -> None:
    """The rendered user data runs exactly the recipe's command lines (else hosts would just
    run them for real: correct, but slow)."""
    spec = construct_host_spec("b", "k.eif", _measurements(), "0" * 64)
    lines = spec.user_data().replace("\\\n", " ").splitlines()
    commands = [shlex.split(line) for line in lines if line.strip() and not line.startswith("#")]
    recipe = prepared.agent_recipe()
    assert recipe[0] in commands
    assert recipe[1] in commands


def _measurements() -> object:
    from enclavekit.pcr import Measurements

    return Measurements(pcr0=b"\0" * 48, pcr1=b"\1" * 48, pcr2=b"\2" * 48)


@pytest.mark.slow
def test_a_host_replays_the_agent_venv_and_runs_anything_else_for_real(tmp_path: Path) -> None:
    assert prepared.ensure(), "the machine could not prepare the agent venv's results"
    venv, pip = prepared.AGENT_VENV, f"{prepared.AGENT_VENV}/bin/pip"
    pins = " ".join(shlex.quote(p) for p in runtime_requirements())
    cache = prepared.cache_dir()
    user_data = f"""#!/bin/bash
set -euo pipefail
install -d -m 0755 /opt/enclavekit
python3.11 -m venv {venv}
{pip} install {RECIPE_FLAGS} {pins}
env -u PYTHONPATH {pip} freeze | sed 's/^/FROZEN /'
{venv}/bin/python3 -I -c 'import boto3, botocore; print("IMPORTS", boto3.__version__)'
# the same command on the venv it changed: not the state the result was kept for
{pip} install {RECIPE_FLAGS} {pins} && echo "AGAIN rc=0"
# a pin the wheelhouse lacks, with the recipe's own flags: pip's own error
{pip} install {RECIPE_FLAGS} 'boto3==0.0.1' || echo "MISSING rc=$?"
touch {cache}/entries/probe 2>/dev/null && echo "CACHE WRITABLE" || echo "CACHE READ-ONLY"
cat /run/enclavekit-host/prepared.log | sed 's/^/LOG /'
"""
    with booted(tmp_path, user_data) as (layout, host):
        out = console(layout)
        assert host["boot"]["state"] == "done", out[-3000:]
    log = [line.split()[1:4] for line in out.splitlines() if line.startswith("LOG ")]
    kinds = [(words[0], words[2]) for words in log]
    assert kinds[:2] == [("venv", "replayed:"), ("pip", "replayed:")], out[-3000:]
    # the second install and the missing pin were looked up and ran for real
    assert kinds[2:] == [("pip", "not"), ("pip", "not")], out[-3000:]
    frozen = sorted(line.split()[1] for line in out.splitlines() if line.startswith("FROZEN "))
    assert frozen == sorted(runtime_requirements())
    assert f"IMPORTS {runtime_requirements()[0].split('==')[1]}" in out
    assert "AGAIN rc=0" in out
    assert "ERROR: Could not find a version that satisfies the requirement boto3==0.0.1" in out
    assert "MISSING rc=1" in out
    assert "CACHE READ-ONLY" in out and not (cache / "entries" / "probe").exists()
