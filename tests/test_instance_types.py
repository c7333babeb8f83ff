"""The instance-type table and the enclave rules judged against it."""

from __future__ import annotations

import pytest

from enclavekit import instance_types as it
from enclavekit.errors import InvalidInput

REQUIRED_FAMILIES = (
    *("m5", "m5a", "m5n", "m6i", "m6a", "m7i", "c5", "c5a", "c6i", "c6a", "c7i"),
    *("r5", "r5a", "r6i", "m6g", "c6g", "r6g", "m7g", "c7g", "t3", "t3a", "t4g"),
)


def test_table_covers_required_families_with_metal() -> None:
    for fam in REQUIRED_FAMILIES:
        sizes = {t.size for t in it.TYPES.values() if t.family == fam}
        assert {"large", "xlarge", "2xlarge"} <= sizes, fam
    for metal in ("m5.metal", "m6i.metal", "c5.metal", "r5.metal", "m6g.metal", "m7i.metal-48xl"):
        assert it.lookup(metal).metal


@pytest.mark.parametrize(
    ("name", "vcpus", "mem", "arch"),
    [
        ("m5a.xlarge", 4, 16384, "x86_64"),
        ("c5.9xlarge", 36, 73728, "x86_64"),
        ("r6i.large", 2, 16384, "x86_64"),
        ("m6g.medium", 1, 4096, "arm64"),
        ("c6g.large", 2, 4096, "arm64"),
        ("t3.nano", 2, 512, "x86_64"),
        ("m5.metal", 96, 393216, "x86_64"),
    ],
)
def test_known_sizes(name: str, vcpus: int, mem: int, arch: str) -> None:
    t = it.lookup(name)
    assert (t.vcpus, t.memory_mib, t.architecture) == (vcpus, mem, arch)
    assert t.threads_per_core == (2 if arch == "x86_64" else 1)


@pytest.mark.parametrize(
    "name",
    [
        "m5a.xlarge",
        "m6i.xlarge",
        "c6g.large",
        "m7g.large",
        "c7i.16xlarge",
        "r5.2xlarge",
        "M5A.XLARGE",
    ],
)
def test_capable(name: str) -> None:
    assert it.enclave_capable(name)
    assert it.why_not(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("t3.large", "burstable"),
        ("t4g.xlarge", "burstable"),
        ("m5a.large", "at least 4 vCPUs"),
        ("c5.large", "at least 4 vCPUs"),
        ("m6g.medium", "at least 2 vCPUs"),
        ("m5.metal", "bare metal"),
        ("m7i.metal-24xl", "bare metal"),
        ("m7i-flex.xlarge", "not supporting"),  # AWS: NitroEnclavesSupport unsupported
        ("c7gn.xlarge", "not supporting"),
    ],
)
def test_not_capable_says_why(name: str, words: str) -> None:
    assert not it.enclave_capable(name)
    reason = it.why_not(name)
    assert reason is not None and words in reason and name in reason


def test_lookup_unknown_names_value_and_examples() -> None:
    with pytest.raises(InvalidInput, match=r"'x9.huge'.*m5a\.xlarge|m5a\.xlarge.*'x9.huge'"):
        it.lookup("x9.huge")
    with pytest.raises(InvalidInput, match="sizes of m5a: large, xlarge"):
        it.lookup("m5a.tiny")


def test_hibernation_flags() -> None:
    assert it.lookup("m5.xlarge").hibernation
    assert not it.lookup("m5.metal").hibernation
    assert not it.lookup("m5.24xlarge").hibernation  # 384 GiB is over the 150 GiB limit
    assert it.lookup("c6a.xlarge").hibernation  # AWS's DescribeInstanceTypes says supported
    assert not it.lookup("u-6tb1.56xlarge").hibernation


def test_capable_list_excludes_every_bad_kind() -> None:
    names = it.enclave_capable_types()
    assert "m5a.xlarge" in names
    assert not [n for n in names if it.TYPES[n].burstable or it.TYPES[n].metal]


@pytest.mark.parametrize(
    ("name", "cpus", "mem", "words"),
    [
        ("m5a.xlarge", 3, 512, "must be even"),
        ("m5a.xlarge", 4, 512, "at most 2, got 4"),
        ("m5a.xlarge", 2, 32, "at least 64 MiB"),
        ("m5a.xlarge", 2, 513, "multiple of 2 MiB"),
        ("m5a.xlarge", 2, 16384, "at most 15360 MiB"),
        ("c6g.large", 2, 512, "at most 1, got 2"),
        ("m5a.xlarge", 0, 512, ">= 1"),
    ],
)
def test_allocator_problems(name: str, cpus: int, mem: int, words: str) -> None:
    problems = it.allocator_problems(name, cpus, mem)
    assert len(problems) == 1 and words in problems[0], problems


def test_allocator_fits() -> None:
    assert it.allocator_problems("m5a.xlarge", 2, 512) == []
    assert it.allocator_problems("c6g.large", 1, 2048) == []
    assert it.allocator_problems("m6i.4xlarge", 14, 64 * 1024 - 1024) == []


def test_table_is_aws_data_with_source_and_date() -> None:
    """Every type AWS flags as enclave-capable obeys the user guide's rules, and the families
    new users hit (7th-gen AMD, network-optimised Intel, Graviton 3/4) are there."""
    assert "DescribeInstanceTypes" in it.SOURCE["source"]
    assert it.SOURCE["rules"].startswith("https://docs.aws.amazon.com/enclaves/")
    assert it.SOURCE["read"] == "2026-12-02"
    capable = [t for t in it.TYPES.values() if t.nitro_enclaves]
    assert len({t.family for t in capable}) >= 100
    for t in capable:
        assert not t.burstable and not t.metal, t.name
        assert t.vcpus // t.threads_per_core >= 2, t.name  # a core for the parent, one to give
        assert it.enclave_capable(t)
    for name in ("m7a.xlarge", "c6in.xlarge", "m8g.large", "r7iz.xlarge", "c7i.48xlarge"):
        assert it.enclave_capable(name), name
    assert it.known_family("m7a.weird") and not it.known_family("zz9.large")
