"""Every benchmark imports and its cheap parts run with tiny sizes, so `make test` catches a
broken bench before `make bench` does. Nothing here asserts a timing (budget: under 20 s)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from bench import __main__ as runner
from bench import bench_https, bench_up
from enclavekit.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent


def test_every_bench_module_imports_and_has_main() -> None:
    names = runner.bench_names()
    assert {"bench_up", "bench_https", "bench_kms", "bench_attestation"} <= set(names)
    for name in names:
        assert callable(importlib.import_module(f"bench.{name}").main), name


def test_runner_selects_by_short_or_full_name_and_refuses_unknown() -> None:
    available = runner.bench_names()
    assert runner.select([], available) == available
    assert runner.select(["up", "bench_https", "up"], available) == ["bench_up", "bench_https"]
    with pytest.raises(InvalidInput, match="expected one of .* found 'nope'"):
        runner.select(["nope"], available)
    assert runner.main(["nope"]) == 2


def test_runner_header_names_cores_python_and_node() -> None:
    header = runner.machine()
    assert "cores" in header and f"python {sys.version_info[0]}." in header
    assert "node v22." in header, header


def test_runner_reports_a_failing_bench_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(importlib.import_module("bench.bench_image"), "main", broken)
    assert runner.main(["image"]) == 1
    out = capsys.readouterr().out
    assert "=== bench_image ·" in out and "bench_image: FAILED: RuntimeError: boom" in out


def test_attestation_bench_runs_with_short_measurements(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = importlib.import_module("bench.bench_attestation")
    rate = mod._rate
    monkeypatch.setattr(mod, "_rate", lambda fn, duration=0.0: rate(fn, 0.02))
    mod.main()
    assert "verify doc/s (cold)" in capsys.readouterr().out


def test_image_bench_runs_on_small_images(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = importlib.import_module("bench.bench_image")
    urandom = mod.os.urandom
    monkeypatch.setattr(mod.os, "urandom", lambda n: urandom(min(n, 1 << 16)))
    mod.main()
    assert "write_newc (2000 files)" in capsys.readouterr().out


def test_emulator_bench_runs_with_few_calls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = importlib.import_module("bench.bench_emulator")
    per_call = mod._per_call
    monkeypatch.setattr(mod, "_per_call", lambda fn, n: per_call(fn, min(n, 10)))
    mod.main()
    assert "NSM DescribePCR round trip" in capsys.readouterr().out


def test_kms_bench_runs_with_a_few_calls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = importlib.import_module("bench.bench_kms")
    monkeypatch.setattr(mod, "N", 4)
    mod.main()
    out = capsys.readouterr().out
    assert "stock moto Decrypt (baseline)" in out and "attested Decrypt (fresh doc/call)" in out


def test_lint_bench_helpers_on_three_templates(tmp_path: Path) -> None:
    mod = importlib.import_module("bench.bench_lint")
    gen = mod._generate(tmp_path, n=3)
    seconds, rc = mod._timed([sys.executable, "-m", "enclavekit", "lint", *map(str, gen)], tmp_path)
    assert len(gen) == 3 and seconds > 0 and rc in (0, 1)


def test_up_bench_copies_the_sample_app_and_writes_a_trivial_baseline(tmp_path: Path) -> None:
    app = bench_up.copy_sample_app(tmp_path / "app")
    assert (app / "app.py").read_bytes() == (ROOT / "app.py").read_bytes()
    assert (app / "enclave_app" / "enclave.json").is_file()
    config = json.loads((app / "cdk.json").read_text())
    original = json.loads((ROOT / "cdk.json").read_text())
    assert config["app"] == f"{sys.executable} app.py"
    assert config["context"] == {**original["context"], "web_host": False}
    trivial = bench_up.write_trivial_app(tmp_path / "trivial")
    compile((trivial / "app.py").read_text(), "app.py", "exec")
    assert json.loads((trivial / "cdk.json").read_text())["app"].startswith(sys.executable)
    assert bench_up.timed_cdk(["--version"], trivial, "http://localhost:1") > 0


def test_up_bench_table_has_every_phase_and_its_ratios() -> None:
    base = bench_up.Baselines(cli=0.5, synth=2.0, deploy_create=4.0, deploy_nochange=2.0)
    first = {
        "endpoint": 1.0,
        "synth": 4.0,
        "bootstrap": 5.0,
        "deploy": 8.0,
        "seal": 0.5,
        "boot": 0.5,
        "verify": 3.0,
    }
    second = {**first, "bootstrap": 0.1, "deploy": 3.0}
    lines = bench_up.table(first, second, base).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert list(rows) == [*bench_up.PHASES, "total"]
    assert rows["synth"][1:4] == ["4.0", "8.0", "2.00"]  # 4 s = 8 x cli = 2 x trivial synth
    assert rows["deploy"][4:] == ["3.0", "6.0", "1.50"]  # vs the no-change trivial deploy
    assert rows["bootstrap"][3] == "-"
    assert rows["total"][1] == "22.0" and rows["total"][3] == f"{22.0 / (2 + 5 + 4):.2f}"


def test_https_bench_compares_two_direct_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No deployment here: a second direct server stands in for the enclave."""
    state = tmp_path / "state"
    domain, label = "enclave.example.test", "i-0123456789abcdef0-enc0123456789abcdef"
    other = bench_https.same_length_label(label)
    assert len(other) == len(label) and other != label
    with (
        bench_https.direct_server(state, domain, "EC_prime256v1", label, tmp_path / "a") as a,
        bench_https.direct_server(state, domain, "RSA_2048", other, tmp_path / "b") as b,
    ):
        assert bench_https.served_key_algorithm(a) == "EC_prime256v1"
        assert bench_https.served_key_algorithm(b) == "RSA_2048"
        assert bench_https.keepalive_supported(a)
        stand_in = bench_https.Target("stand-in", a.port, domain, a.context, label)
        cases = (("new connection, 1 client", False, 1, 5), ("keep-alive, 2 clients", True, 2, 20))
        rows = bench_https.compare(stand_in, b, seconds=2.0, cases=cases)
    assert [r[1].requests for r in rows if r[1]] == [5, 20]
    out = capsys.readouterr().out
    assert "new connection, 1 client" in out and "x direct" in out


@pytest.mark.slow  # two real endpoints
def test_iam_bench_measures_on_and_off_with_few_requests(tmp_path: Path) -> None:
    mod = importlib.import_module("bench.bench_iam")
    rows = mod.measure(tmp_path, n=2, deploy=False)
    assert set(rows) >= {"s3 GetObject p50 ms", "sts AssumeRole p50 ms"}
    assert all(set(v) == {"on", "off"} for v in rows.values())
    assert "on/off" in mod.table(rows)


def test_host_bench_builds_its_stacks_and_prints_both_ratios() -> None:
    from bench import bench_host

    m = {f"PCR{i}": "00" * 48 for i in range(3)}
    user_data, meta = bench_host.templates(m)
    assert "UserData" not in bench_host.bare_template(user_data)["Resources"]["Host"]["Properties"]
    assert meta["Resources"]["Host"]["Metadata"]["enclavekit:host"]["image"]["measurements"] == m
    rounds = [
        {
            "user_data": 4.0,
            "bare_create": 0.5,
            "run_enclave": 1.5,
            "metadata": metadata,
            "constructs": 6.0,
            "replayed": ["venv", "pip"],
        }
        for metadata in (2.0, 2.0)
    ]
    text = bench_host.table(rounds, prepared_ready=True)
    assert "enclave-run (create 0.50 + run-enclave 1.50)" in text
    assert "3.00" in text and "replayed prepared results (pip, venv)" in text
    gone = [dict(r, metadata=None, replayed=[]) for r in rounds]
    text = bench_host.table(gone, prepared_ready=False)
    metadata_row = next(line for line in text.splitlines() if "Metadata path" in line)
    assert metadata_row.split()[-3:] == ["-", "-", "-"]
    assert "run for real (no prepared results on this machine)" in text
