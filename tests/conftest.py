"""Shared fixtures. Tests that start real components stop them; nothing leaves loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real AWS attestation documents (and the AWS root) from ../shared/testdata, copied into
# the repo so a clone runs its tests on its own; test_testdata_copy keeps the copy honest.
ATTESTATION_DATA = ROOT / "tests" / "data" / "attestation"
SHARED_ATTESTATION_DATA = ROOT.parent / "shared" / "testdata" / "attestation"

# jsii starts `node` at the first `import aws_cdk` (test modules import it at collection time):
# make that the project's Node.js 22, not an end-of-life system Node.
_NODE = ROOT / "node_modules" / "node" / "bin" / "node"
if _NODE.exists():
    os.environ.setdefault("JSII_NODE", str(_NODE))


@pytest.fixture(autouse=True, scope="session")
def _no_real_aws() -> None:
    """No test process may hold a real AWS credential or profile."""
    for key in list(os.environ):
        if key.startswith("AWS_") or key.startswith("CDK_DEFAULT_"):
            del os.environ[key]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


@pytest.fixture(scope="session")
def attestation_data() -> Path:
    if not ATTESTATION_DATA.is_dir():
        pytest.fail(f"real attestation documents not found at {ATTESTATION_DATA}")
    return ATTESTATION_DATA


# Parallel runs: `make test` runs pytest-xdist with `-n 2`, and pyproject's addopts say
# `--dist loadfile --no-loadscope-reorder`, so xdist hands each worker whole work units in
# collection order. A unit is a module, so a module-scoped fixture (an endpoint, a deployed
# stack) is set up once, on one worker, as in a serial run; the modules of a directory below
# whose conftest has a session-scoped fixture that deploys a whole app form one unit, so that
# deployment is made once, not on both workers. (Not xdist_group marks and `--dist loadgroup`:
# xdist 3.8 puts the group into `item._nodeid`, which pytest 9.2 no longer reads, so marked tests
# would silently spread over the workers.)
SHARED_DEPLOYMENT_DIRS = (
    "tests/security/",  # conftest's `target`: the sample app deployed once (~40 s)
)


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its module, or the directory of SHARED_DEPLOYMENT_DIRS."""
    module = nodeid.split("::", 1)[0]
    return next((d for d in SHARED_DEPLOYMENT_DIRS if module.startswith(d)), module)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown when it is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class WorkUnits(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnits(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # a serial run keeps its order
    # On each xdist worker (all sort alike, as xdist requires): the units with a slow test go
    # first, so a run does not end on one worker busy with a deployment while the other has
    # nothing left; inside a unit the order is kept (a stable sort).
    slow = {work_unit(i.nodeid) for i in items if i.get_closest_marker("slow") is not None}
    items.sort(key=lambda i: work_unit(i.nodeid) not in slow)
