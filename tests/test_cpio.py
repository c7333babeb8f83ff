"""cpio newc writer/reader: kernel-compatible layout, reproducibility, strict reading."""

from __future__ import annotations

import gzip

import pytest

from enclavekit.cpio import CpioEntry, read_newc, write_newc
from enclavekit.errors import InvalidInput


def _headers(data: bytes) -> list[dict[str, object]]:
    """Independent newc walk: the fields of every member, checking 4-byte alignment."""
    names = [
        "ino",
        "mode",
        "uid",
        "gid",
        "nlink",
        "mtime",
        "filesize",
        "devmajor",
        "devminor",
        "rdevmajor",
        "rdevminor",
        "namesize",
        "check",
    ]
    out = []
    pos = 0
    while True:
        assert pos % 4 == 0
        assert data[pos : pos + 6] == b"070701"
        fields = {n: int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i, n in enumerate(names)}
        name_end = pos + 110 + fields["namesize"]
        fields["name"] = data[pos + 110 : name_end - 1].decode()
        start = (name_end + 3) & ~3
        fields["data"] = data[start : start + fields["filesize"]]
        out.append(fields)
        pos = (start + fields["filesize"] + 3) & ~3
        if fields["name"] == "TRAILER!!!":
            assert pos == len(data)
            return out


def test_round_trip_and_parents_added_sorted() -> None:
    entries = [
        CpioEntry("rootfs/app/main.py", b"print('hi')\n"),
        CpioEntry("cmd", b"/bin/app\n"),
        CpioEntry("rootfs/app/run.sh", b"#!/bin/sh\n", 0o755),
    ]
    data = write_newc(entries)
    got = read_newc(data)
    assert [e.path for e in got] == [
        "cmd",
        "rootfs",
        "rootfs/app",
        "rootfs/app/main.py",
        "rootfs/app/run.sh",
    ]
    by = {e.path: e for e in got}
    assert by["rootfs"].is_dir and by["rootfs"].mode == 0o755
    assert by["rootfs/app/run.sh"].mode == 0o755
    assert by["rootfs/app/main.py"].data == b"print('hi')\n"
    assert by["rootfs/app/main.py"].mode == 0o644


def test_fixed_metadata_fields_and_order_independence() -> None:
    a = [CpioEntry("b/x", b"1"), CpioEntry("a", b"22"), CpioEntry("b", is_dir=True)]
    data = write_newc(a)
    assert data == write_newc(list(reversed(a)))
    heads = _headers(data)
    assert [h["name"] for h in heads] == ["a", "b", "b/x", "TRAILER!!!"]
    for h in heads[:-1]:
        assert h["mtime"] == 0 and h["uid"] == 0 and h["gid"] == 0 and h["check"] == 0
    assert [h["ino"] for h in heads[:-1]] == [1, 2, 3]
    assert heads[0]["mode"] == 0o100644 and heads[1]["mode"] == 0o040755
    assert heads[1]["nlink"] == 2 and heads[0]["nlink"] == 1
    assert heads[2]["data"] == b"1"


def test_paths_are_normalised_and_unsafe_ones_refused() -> None:
    assert CpioEntry("/./rootfs//x").path == "rootfs/x"
    for bad in ("", "/", "../etc/passwd", "a/../../b"):
        with pytest.raises(InvalidInput, match="cpio path: expected a relative path"):
            CpioEntry(bad)


def test_duplicates_and_file_as_parent_refused() -> None:
    with pytest.raises(InvalidInput, match="duplicate entry 'a'"):
        write_newc([CpioEntry("a"), CpioEntry("/a")])
    with pytest.raises(InvalidInput, match="'a' is a file but 'a/b' needs it as a directory"):
        write_newc([CpioEntry("a", b"x"), CpioEntry("a/b", b"y")])


def test_symlink_gzip_and_concatenation() -> None:
    one = write_newc([CpioEntry("bin/sh", b"/bin/busybox", symlink=True)])
    two = write_newc([CpioEntry("etc/hosts", b"127.0.0.1 localhost\n")])
    got = read_newc(one + b"\0" * 8 + two)
    assert [e.path for e in got] == ["bin", "bin/sh", "etc", "etc/hosts"]
    assert got[1].symlink and got[1].data == b"/bin/busybox"
    assert read_newc(gzip.compress(two, mtime=0)) == read_newc(two)


def test_truncated_and_corrupt_archives_raise_with_offset() -> None:
    data = write_newc([CpioEntry("file", b"x" * 100)])
    for cut in range(0, len(data) - 1, 7):
        with pytest.raises(InvalidInput, match="cpio archive: "):
            read_newc(data[:cut] if cut else b"\x00")
    with pytest.raises(InvalidInput, match="expected newc magic 070701 at offset 0"):
        read_newc(b"070702" + data[6:])
    bad_hex = data[:14] + b"ZZZZZZZZ" + data[22:]
    with pytest.raises(InvalidInput, match="field mode at offset 14 is not hex"):
        read_newc(bad_hex)
    fifo = data[:14] + b"%08X" % 0o010644 + data[22:]
    with pytest.raises(InvalidInput, match="unsupported file type"):
        read_newc(fifo)
    with pytest.raises(InvalidInput, match="gzip data does not decompress"):
        read_newc(b"\x1f\x8b" + b"junk")


def test_entry_validation_messages() -> None:
    with pytest.raises(InvalidInput, match="mode must be permission bits"):
        CpioEntry("a", mode=0o100644)
    with pytest.raises(InvalidInput, match="a directory cannot carry data"):
        CpioEntry("a", b"x", is_dir=True)
