"""NSM and vsock transports, so an enclave program never needs to know where it runs.

On Nitro hardware the NSM is the `/dev/nsm` character device driven by one ioctl, and vsock is
`AF_VSOCK`. In the enclavekit emulator the NSM is a Unix socket at `/dev/nsm` served from outside
the enclave (so the enclave cannot forge its measurements), and vsock is emulated with Unix
sockets laid out as `<root>/<cid>/<port>`. `open_nsm()` / `open_vsock()` pick the right one at
start; everything above them is identical.

Pure stdlib plus `enclavekit.nsm` on purpose: this module is vendored into enclave images.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import ssl
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, Self

from enclavekit.contract import PARENT_CID as PARENT_CID  # the CID this wire speaks to
from enclavekit.errors import EmulatorError, InvalidInput, NsmMessageError

VMADDR_CID_ANY = 0xFFFFFFFF
NSM_DEVICE = "/dev/nsm"
EMULATED_VSOCK_ROOT = "/run/enclavekit/vsock"
AF_VSOCK = getattr(socket, "AF_VSOCK", 40)

# Kernel UAPI (include/uapi/linux/nsm.h): _IOWR(0x0A, 0, struct nsm_raw), caps on both buffers.
NSM_IOCTL_RAW = 0xC0200A00
MAX_REQUEST_LEN = 0x1000
MAX_RESPONSE_LEN = 0x3000
# What the Rust NSM client answers, without an ioctl, for a request over the cap:
# CBOR {"Error": "InputTooLarge"} — the same bytes the emulated device returns.
_INPUT_TOO_LARGE = bytes.fromhex("a1654572726f726d496e707574546f6f4c61726765")
_FRAME = struct.Struct(">I")
# sun_path is 108 bytes including the NUL; longer paths go through an O_PATH directory fd.
_SUN_PATH_MAX = 107


class NsmTransport(Protocol):
    """Carries one encoded NSM request to the module and returns its encoded response."""

    def call(self, request: bytes) -> bytes: ...

    def close(self) -> None: ...


class IoctlNsm:
    """The real Nitro `/dev/nsm`: one `NSM_IOCTL_RAW` ioctl per request (32-byte `nsm_raw`)."""

    def __init__(self, path: str = NSM_DEVICE) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._lock = threading.Lock()

    def call(self, request: bytes) -> bytes:
        if len(request) > MAX_REQUEST_LEN:
            return _INPUT_TOO_LARGE
        req = ctypes.create_string_buffer(request, len(request) or 1)
        resp = ctypes.create_string_buffer(MAX_RESPONSE_LEN)
        # struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; } (native endian)
        arg = bytearray(
            struct.pack(
                "=QQQQ",
                ctypes.addressof(req),
                len(request),
                ctypes.addressof(resp),
                MAX_RESPONSE_LEN,
            )
        )
        with self._lock:
            try:
                fcntl.ioctl(self._fd, NSM_IOCTL_RAW, arg, True)
            except OSError as exc:
                if exc.errno == 90:  # EMSGSIZE: the driver's own size check
                    return _INPUT_TOO_LARGE
                raise EmulatorError(
                    f"NSM ioctl on {self.path} failed: expected success, got {exc}"
                ) from exc
        (resp_len,) = struct.unpack_from("=Q", arg, 24)
        return resp.raw[: min(resp_len, MAX_RESPONSE_LEN)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"NSM channel closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """One message of the emulated NSM channel: 4-byte big-endian length, then the bytes."""
    sock.sendall(_FRAME.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket, limit: int) -> bytes:
    """Read one framed message; a length above `limit` is a protocol error (NsmMessageError)."""
    (length,) = _FRAME.unpack(_recv_exact(sock, _FRAME.size))
    if length > limit:
        raise NsmMessageError(
            f"NSM channel frame: expected at most {limit} bytes, got a length of {length}"
        )
    return _recv_exact(sock, length)


class SocketNsm:
    """The emulator's NSM device channel: a Unix socket, one framed request -> one response."""

    def __init__(self, path: str | Path = NSM_DEVICE) -> None:
        self.path = str(path)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with unix_address(self.path) as addr:
                    sock.connect(addr)
            except OSError as exc:
                sock.close()
                raise EmulatorError(
                    f"emulated NSM at {self.path}: expected a listening socket, got {exc}"
                ) from exc
            self._sock = sock
        return self._sock

    def call(self, request: bytes) -> bytes:
        if len(request) > MAX_REQUEST_LEN:
            return _INPUT_TOO_LARGE
        with self._lock:
            sock = self._connect()
            try:
                send_frame(sock, request)
                return recv_frame(sock, MAX_RESPONSE_LEN)
            except (OSError, ConnectionError) as exc:
                self.close_locked()
                raise EmulatorError(f"emulated NSM at {self.path} failed: {exc}") from exc

    def close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


def open_nsm(path: str = NSM_DEVICE) -> NsmTransport:
    """`path` a character device -> the real ioctl; a Unix socket -> the emulator's channel."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise EmulatorError(
            f"NSM device {path}: expected a character device (Nitro) or a Unix socket "
            f"(emulator), found nothing ({exc.strerror})"
        ) from exc
    if stat.S_ISCHR(mode):
        return IoctlNsm(path)
    if stat.S_ISSOCK(mode):
        return SocketNsm(path)
    raise EmulatorError(
        f"NSM device {path}: expected a character device or a Unix socket, "
        f"found file mode {stat.filemode(mode)}"
    )


def nsm_request(transport: NsmTransport, req: Any) -> Any:
    """Send one `enclavekit.nsm` request object and return the decoded response object."""
    from enclavekit import nsm

    return nsm.decode_response(transport.call(nsm.encode_request(req)))


# --------------------------------------------------------------------------------------------
# vsock


class VsockTransport(Protocol):
    """Stream sockets addressed by (CID, port), as AF_VSOCK gives them."""

    def connect(self, cid: int, port: int) -> socket.socket: ...

    def listen(self, port: int, backlog: int = 16) -> socket.socket: ...


def _check_port(what: str, value: int, upper: int = 0xFFFFFFFF) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise InvalidInput(f"vsock {what}: expected an integer 0..{upper}, got {value!r}")


def stream_socket(family: int, setup: Callable[[socket.socket], None]) -> socket.socket:
    """A new stream socket of `family` after `setup(sock)` (connect or bind+listen); a socket
    whose setup fails is closed before the error goes on."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        setup(sock)
    except OSError:
        sock.close()
        raise
    return sock


class AfVsock:
    """Real vsock (`AF_VSOCK`), as inside a Nitro Enclave or on its parent."""

    def connect(self, cid: int, port: int) -> socket.socket:
        _check_port("cid", cid)
        _check_port("port", port)
        return stream_socket(AF_VSOCK, lambda sock: sock.connect((cid, port)))

    def listen(self, port: int, backlog: int = 16) -> socket.socket:
        _check_port("port", port)

        def bind(sock: socket.socket) -> None:
            sock.bind((VMADDR_CID_ANY, port))
            sock.listen(backlog)

        return stream_socket(AF_VSOCK, bind)


@contextlib.contextmanager
def unix_address(path: str | Path) -> Any:
    """A usable AF_UNIX address for `path`, even when it is longer than sun_path allows.

    Long paths are reached through `/proc/self/fd/<dirfd>/<name>` of an O_PATH handle on the
    directory, which Linux resolves for bind() and connect() alike.
    """
    text = str(path)
    if len(text.encode()) <= _SUN_PATH_MAX:
        yield text
        return
    parent, name = os.path.split(text)
    fd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


class EmulatedVsock:
    """vsock over Unix sockets: a listener on (cid, port) is the socket `<root>/<cid>/<port>`.

    Inside an emulated enclave `root` is `/run/enclavekit/vsock`, where only the enclave's own
    CID directory and the parent's (read-only: connect, never listen) are mounted.
    """

    def __init__(self, root: str | Path, own_cid: int) -> None:
        _check_port("cid", own_cid)
        self.root = Path(root)
        self.own_cid = own_cid

    def path(self, cid: int, port: int) -> Path:
        return self.root / str(cid) / str(port)

    def connect(self, cid: int, port: int) -> socket.socket:
        _check_port("cid", cid)
        _check_port("port", port)

        def dial(sock: socket.socket) -> None:
            try:
                with unix_address(self.path(cid, port)) as addr:
                    sock.connect(addr)
            except FileNotFoundError as exc:
                raise ConnectionRefusedError(
                    exc.errno, f"no vsock listener on cid {cid} port {port}"
                ) from None

        return stream_socket(socket.AF_UNIX, dial)

    def listen(self, port: int, backlog: int = 16) -> socket.socket:
        _check_port("port", port)
        path = self.path(self.own_cid, port)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    with unix_address(path) as addr:
                        probe.connect(addr)
                    # OSError on purpose (outside our tree): the kernel's EADDRINUSE, as
                    # AF_VSOCK answers a bind to a port in use.
                    raise OSError(98, f"vsock port {port} on cid {self.own_cid} is in use")
                except ConnectionRefusedError:
                    path.unlink()  # stale socket of a dead listener
                finally:
                    probe.close()

        def bind(sock: socket.socket) -> None:
            with unix_address(path) as addr:
                sock.bind(addr)
            sock.listen(backlog)

        return stream_socket(socket.AF_UNIX, bind)


def _af_vsock_usable() -> bool:
    if not os.path.exists("/dev/vsock"):
        return False
    try:
        socket.socket(AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def open_vsock(emulated_root: str = EMULATED_VSOCK_ROOT) -> VsockTransport:
    """Inside the emulator (its vsock mount present) -> emulated; else AF_VSOCK if usable."""
    self_file = Path(emulated_root) / "self"
    if self_file.is_file():
        text = self_file.read_text().strip()
        if not text.isdigit():
            raise EmulatorError(f"{self_file}: expected a decimal CID, got {text!r}")
        return EmulatedVsock(emulated_root, int(text))
    if _af_vsock_usable():
        return AfVsock()
    raise EmulatorError(
        f"vsock: expected /dev/vsock (Nitro) or {self_file} (emulator), found neither"
    )


# ---------------------------------------------------------------------------------------------
# relaying


def pump(a: socket.socket, b: socket.socket, *, chunk: int = 65536) -> None:
    """Copy bytes both ways between two connected stream sockets until both sides have closed.

    A side's end of stream is passed on as a half-close (SHUT_WR), so request/response
    protocols that close their sending side still work; an error on either side ends both.
    The one relay loop of the project: vsock-proxy, the parent's TCP relay and the enclave's
    loopback forwarder all move their bytes with it. The sockets stay open for the caller.
    """
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    open_sides = 2
    try:
        while open_sides:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst: socket.socket = key.data
                try:
                    data = src.recv(chunk)
                except OSError:
                    data = b""
                if data:
                    try:
                        dst.sendall(data)
                        continue
                    except OSError:
                        return
                sel.unregister(src)
                open_sides -= 1
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
    finally:
        sel.close()


def loopback_listener(port: int = 0) -> tuple[socket.socket, int]:
    """A TCP listener on 127.0.0.1:`port` (0: any free port) and the port it got."""
    sock = socket.create_server(("127.0.0.1", port), backlog=64)
    return sock, sock.getsockname()[1]


def server_handshake(context: ssl.SSLContext, conn: socket.socket, timeout: float) -> ssl.SSLSocket:
    """The server side of a TLS handshake on `conn`, bounded by `timeout` (left set after it).

    A peer that never finishes its handshake cannot hold a thread; on failure `conn` is closed
    and the `ssl.SSLError` / `OSError` raised for the caller to log in its own words.
    """
    conn.settimeout(timeout)
    try:
        return context.wrap_socket(conn, server_side=True)
    except OSError:  # ssl.SSLError included
        conn.close()
        raise


class ConnectionServer:
    """A listening stream socket whose connections are each served on a thread of their own.

    The one accept loop of the project (the enclave's control and TLS ports, the parent's
    relay, vsock-proxy, the TLS front, the KMS forwarder): a subclass implements
    `serve(conn, addr)` and owns `conn` from then on. `stopped` is set by stop(), which also
    closes the listener so the accept loop ends.
    """

    thread_name = "server"

    def __init__(self, listener: socket.socket) -> None:
        self._listener = listener
        self.stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._accept, daemon=True, name=f"{self.thread_name}-accept"
        )

    def serve(self, conn: socket.socket, addr: Any) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, addr = self._listener.accept()
            except OSError:
                return
            self.dispatch(conn, addr)

    def dispatch(self, conn: socket.socket, addr: Any) -> None:
        """Run `serve(conn, addr)` off the accept loop: here on a thread of its own; a subclass
        may bound it (vsock-proxy's worker pool)."""
        threading.Thread(
            target=self.serve, args=(conn, addr), daemon=True, name=f"{self.thread_name}-conn"
        ).start()
