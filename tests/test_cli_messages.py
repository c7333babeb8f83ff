"""What a user reads when something is wrong: one line naming the thing and the way out.

- a construct error inside cdk's output (a jsii traceback) becomes one line with the message and
  the line of the user's app that made the construct; `--verbose` keeps the traceback;
- `verify` with no endpoint says to deploy with `enclavekit up`; unknown checks are exit 2;
- an `up` that fails after starting the endpoint says it started it and how to stop it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclavekit.cdk_errors import TracebackFilter, construct_error
from enclavekit.cli import main
from local_backend import pytest_plugin as plugin
from local_backend import server

# cdk synth's stderr for the README example with instance_type="t3.large" (paths shortened)
CDK_OUTPUT = """\
Traceback (most recent call last):
  File "/home/me/payments/app.py", line 78, in <module>
    PaymentsStack(app, "Payments")
  File "/home/me/.venv/lib/python3.11/site-packages/jsii/_runtime.py", line 135, in __call__
    inst = super(JSIIMeta, cast(JSIIMeta, cls)).__call__(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/home/me/payments/app.py", line 33, in __init__
    host = ek.EnclaveHost(
           ^^^^^^^^^^^^^^^
  File "/home/me/.venv/lib/python3.11/site-packages/jsii/_runtime.py", line 135, in __call__
    inst = super(JSIIMeta, cast(JSIIMeta, cls)).__call__(*args, **kwargs)
  File "/home/me/enclavekit/constructs/enclave_constructs/host.py", line 154, in __init__
    raise InvalidInput(
enclavekit.errors.InvalidInput: instance_type must be enclave-capable (for example m5.xlarge), \
got 't3.large': t3.large is a burstable T-series type, which cannot run Nitro Enclaves
Subprocess exited with error 1
"""
ONE_LINE = (
    "instance_type must be enclave-capable (for example m5.xlarge), got 't3.large': t3.large "
    "is a burstable T-series type, which cannot run Nitro Enclaves "
    "(construct EnclaveHost at app.py:33)"
)


def test_construct_error_is_the_message_and_the_apps_line() -> None:
    assert construct_error(CDK_OUTPUT) == ONE_LINE
    assert construct_error("Subprocess exited with error 1\n") is None


def test_traceback_filter_shows_one_line_unless_verbose() -> None:
    quiet, loud = TracebackFilter(), TracebackFilter(verbose=True)
    lines = ["[Warning] something cdk says\n", *CDK_OUTPUT.splitlines(keepends=True)]
    shown = [out for line in lines for out in quiet.feed(line)] + quiet.finish()
    assert shown == [
        "[Warning] something cdk says\n",
        f"error: {ONE_LINE}\n",
        "Subprocess exited with error 1\n",
    ]
    assert quiet.error == ONE_LINE
    everything = [out for line in lines for out in loud.feed(line)] + loud.finish()
    assert "".join(everything) == "".join(lines) and loud.error == ONE_LINE


def test_verify_without_an_endpoint_names_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "is not running" in err and "deploy with `enclavekit up`" in err
    assert main(["verify", "--state-dir", str(tmp_path), "--check", "vibes"]) == 2
    assert "--check: expected some of boot, image-pcrs, secret, " in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["up", "--synth-timeout", "0"])
    assert usage.value.code == 2
    assert "--synth-timeout: expected seconds in (0, 86400], found '0'" in capsys.readouterr().err


@pytest.mark.slow
def test_failed_up_says_it_started_the_endpoint_and_how_to_stop_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "cdk.json").write_text(json.dumps({"app": "python3 -c 'raise SystemExit(3)'"}))
    state, port = tmp_path / "state", plugin.free_port()
    try:
        code = main(["up", "--app", str(app), "--port", str(port), "--state-dir", str(state)])
        err = capsys.readouterr().err
        assert code == 1
        assert "enclavekit: error: synth: `cdk synth --quiet` failed (exit 1)" in err
        assert (
            f"The local endpoint http://localhost:{port} was started by this `up` and is still "
            f"running; stop it with: enclavekit local stop --state-dir {state.resolve()}"
        ) in err
        assert server.status(state).running  # it said so: the endpoint is still there
    finally:
        server.stop(state)
