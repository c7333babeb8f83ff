"""cpio "newc" archives, the initramfs format of an EIF's ramdisk sections.

Why our own writer: PCR1 and PCR2 hash the ramdisk bytes, so a rebuild must give the same bytes
whatever the file times, owners, inode numbers or directory listing order. The writer therefore
fixes mtime 0, uid/gid 0, inode numbers by position, sorts the entries and adds any missing parent
directory (the kernel's initramfs unpacker needs parents before children).

Format (the Linux kernel's Documentation/driver-api/early-userspace/buffer-format.rst): each
entry is the 6-byte magic ``070701``, 13 fields of 8 upper-case hex digits (ino, mode, uid, gid,
nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL
terminated name padded to 4 bytes, then the data padded to 4 bytes; ``TRAILER!!!`` ends it.
"""

from __future__ import annotations

import gzip
import stat
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from enclavekit.errors import InvalidInput

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_FIELDS = (
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
)


def normalize_path(path: str) -> str:
    """Archive member name without leading ``/`` or ``./``; refuses ``..`` and empty names."""
    if not isinstance(path, str):
        raise InvalidInput(f"cpio path: expected a string, found {type(path).__name__}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or "\0" in path:
        raise InvalidInput(
            f"cpio path: expected a relative path without '..' or NUL, found {path!r}"
        )
    return "/".join(parts)


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: a regular file, a directory or (``symlink``) a symbolic link.

    ``mode`` holds permission bits only; it defaults to 0755 for directories and 0644 for
    files. For a symlink ``data`` is the link target.
    """

    path: str
    data: bytes = b""
    mode: int | None = None
    is_dir: bool = False
    symlink: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normalize_path(self.path))
        if not isinstance(self.data, bytes | bytearray):
            raise InvalidInput(f"cpio entry {self.path}: data must be bytes")
        object.__setattr__(self, "data", bytes(self.data))
        if self.is_dir and self.symlink:
            raise InvalidInput(f"cpio entry {self.path}: cannot be both a directory and a symlink")
        if self.is_dir and self.data:
            raise InvalidInput(f"cpio entry {self.path}: a directory cannot carry data")
        mode = self.mode
        if mode is None:
            mode = 0o777 if self.symlink else 0o755 if self.is_dir else 0o644
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise InvalidInput(
                f"cpio entry {self.path}: mode must be permission bits 0..0o7777, found {mode!r}"
            )
        object.__setattr__(self, "mode", mode)

    @property
    def full_mode(self) -> int:
        """The st_mode written to the archive (file type | permission bits)."""
        kind = stat.S_IFLNK if self.symlink else stat.S_IFDIR if self.is_dir else stat.S_IFREG
        assert self.mode is not None
        return kind | self.mode


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _header(ino: int, mode: int, nlink: int, filesize: int, namesize: int) -> bytes:
    values = (ino, mode, 0, 0, nlink, 0, filesize, 0, 0, 0, 0, namesize, 0)
    return NEWC_MAGIC + b"".join(b"%08X" % v for v in values)


def _member(ino: int, mode: int, nlink: int, name: str, data: bytes) -> bytes:
    bname = name.encode("utf-8") + b"\0"
    head = _header(ino, mode, nlink, len(data), len(bname))
    out = head + bname + b"\0" * _pad4(len(head) + len(bname))
    return out + data + b"\0" * _pad4(len(data))


def _sort_key(entry: CpioEntry) -> tuple[str, ...]:
    return tuple(entry.path.split("/"))


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Reproducible newc archive of ``entries`` (sorted; parent directories added as 0755)."""
    by_path: dict[str, CpioEntry] = {}
    for entry in entries:
        if not isinstance(entry, CpioEntry):
            raise InvalidInput(f"cpio entry: expected CpioEntry, found {type(entry).__name__}")
        if entry.path in by_path:
            raise InvalidInput(f"cpio archive: duplicate entry {entry.path!r}")
        by_path[entry.path] = entry
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            existing = by_path.get(parent)
            if existing is None:
                by_path[parent] = CpioEntry(parent, is_dir=True)
            elif not existing.is_dir:
                raise InvalidInput(
                    f"cpio archive: {parent!r} is a file but {path!r} needs it as a directory"
                )
    out = bytearray()
    for ino, entry in enumerate(sorted(by_path.values(), key=_sort_key), start=1):
        nlink = 2 if entry.is_dir else 1
        out += _member(ino, entry.full_mode, nlink, entry.path, entry.data)
    out += _member(0, 0, 1, TRAILER, b"")
    return bytes(out)


def _maybe_gunzip(data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInput(f"cpio archive: gzip data does not decompress ({exc})") from None


def read_newc(data: bytes) -> list[CpioEntry]:
    """Entries of a newc archive (gzip-compressed and concatenated archives accepted).

    Raises ``InvalidInput`` naming the offset for anything that is not well-formed newc.
    Device nodes, FIFOs and sockets are refused: an enclave image never needs them here.
    """
    buf = _maybe_gunzip(bytes(data))
    entries: list[CpioEntry] = []
    pos = 0
    seen_trailer = False
    while pos < len(buf):
        if seen_trailer:
            # Archives may be concatenated, separated by NUL padding (the kernel accepts both).
            while pos < len(buf) and buf[pos] == 0:
                pos += 1
            if pos >= len(buf):
                break
            seen_trailer = False
        if len(buf) - pos < _HEADER_LEN:
            raise InvalidInput(
                f"cpio archive: truncated header at offset {pos} "
                f"({len(buf) - pos} of {_HEADER_LEN} bytes)"
            )
        if buf[pos : pos + 6] != NEWC_MAGIC:
            raise InvalidInput(
                f"cpio archive: expected newc magic 070701 at offset {pos}, found "
                f"{buf[pos : pos + 6]!r}"
            )
        fields: dict[str, int] = {}
        for i, name in enumerate(_FIELDS):
            raw = buf[pos + 6 + 8 * i : pos + 14 + 8 * i]
            try:
                fields[name] = int(raw, 16)
            except ValueError:
                raise InvalidInput(
                    f"cpio archive: field {name} at offset {pos + 6 + 8 * i} is not hex: {raw!r}"
                ) from None
        name_start = pos + _HEADER_LEN
        name_end = name_start + fields["namesize"]
        if fields["namesize"] < 1 or name_end > len(buf):
            raise InvalidInput(f"cpio archive: name of entry at offset {pos} runs past the end")
        if buf[name_end - 1] != 0:
            raise InvalidInput(f"cpio archive: name of entry at offset {pos} is not NUL-terminated")
        try:
            name = buf[name_start : name_end - 1].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"cpio archive: name of entry at offset {pos} is not UTF-8"
            ) from None
        data_start = name_end + _pad4(name_end - pos)
        data_end = data_start + fields["filesize"]
        if data_end > len(buf):
            raise InvalidInput(
                f"cpio archive: data of {name!r} at offset {data_start} runs past the end "
                f"({fields['filesize']} bytes declared)"
            )
        pos = data_end + _pad4(data_end - pos)
        if name == TRAILER:
            seen_trailer = True
            continue
        mode = fields["mode"]
        kind = stat.S_IFMT(mode)
        if name in (".", ""):
            continue
        body = buf[data_start:data_end]
        common = {"path": name, "mode": stat.S_IMODE(mode)}
        if kind == stat.S_IFDIR:
            entries.append(CpioEntry(is_dir=True, **common))
        elif kind == stat.S_IFREG:
            entries.append(CpioEntry(data=body, **common))
        elif kind == stat.S_IFLNK:
            entries.append(CpioEntry(data=body, symlink=True, **common))
        else:
            raise InvalidInput(
                f"cpio archive: entry {name!r} has unsupported file type {oct(kind)} "
                "(only files, directories and symlinks)"
            )
    if not seen_trailer:
        raise InvalidInput(f"cpio archive: no {TRAILER} entry before the end ({len(buf)} bytes)")
    return entries
