"""SCRATCH (not committed): the sample app with its Metadata stripped boots from user data?"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from e2e_support import copy_sample_app, patch_app

from enclavekit import pytest_plugin as plugin
from local_backend.host import control, hooks


def test_sample_app_from_user_data(enclavekit_endpoint: Any, tmp_path: Path) -> None:
    app = copy_sample_app(tmp_path / "app", stack_name="UdSample")
    patch_app(app, 'host.cfn_resource.cfn_options.metadata = {}')
    t0 = time.monotonic()
    plugin.deploy(enclavekit_endpoint, app, seal=False)
    print("deploy", time.monotonic() - t0)
    state = Path(enclavekit_endpoint.state_dir)
    [layout] = hooks.hosts(state)
    host = control.wait_booted(layout, timeout=280)
    print("booted", time.monotonic() - t0, control.boot_error(host))
    console = layout.console.read_text()
    print(console[-4000:])
    print(hooks.host_enclaves(layout))
    time.sleep(10)
    for u in ("enclavekit-enclave-app-agent", "enclavekit-enclave-app-relay"):
        print(control.host_exec(layout, ["journalctl", "-u", u]).stdout[-3000:])
    from local_backend.verify import verify
    print(verify(state).table())
