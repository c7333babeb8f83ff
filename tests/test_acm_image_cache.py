"""The ACM enclave image's cache key covers what the EIF holds, vendored core modules included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from enclavekit import build
from local_backend.acm_enclave import image


def test_a_vendored_module_change_alone_changes_the_cache_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = image.stage(tmp_path / "app")
    before = image.content_digest(app)
    core = tmp_path / "core"
    shutil.copytree(build.core_dir(), core)
    with open(core / "transport.py", "a") as fh:
        fh.write("\n# one more line: a different EIF\n")
    monkeypatch.setattr(image, "core_dir", lambda: core)
    assert image.content_digest(app) != before
