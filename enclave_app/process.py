"""What every enclave program does first, so enclave_app and the ACM enclave's p11ne start alike.

Log to the console (the enclave's only output), keep the AWS SDK's loggers quiet (botocore and
urllib3 log request headers, session token included, at DEBUG), stop on SIGTERM/SIGINT, and bring
the loopback interface up (a Nitro enclave boots with `lo` down, and the KMS forwarder and
boto3 need it).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading

log = logging.getLogger(__name__)
_SDK_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")


def loopback_up() -> bool:
    """Bring `lo` up if it is down (a Nitro enclave boots with it down). True if it is up."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = fcntl.ioctl(s.fileno(), siocgifflags, struct.pack("16sH14x", b"lo", 0))
            flags = struct.unpack_from("H", req, 16)[0]
            if flags & iff_up:
                return True
            fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
            log.info("loopback interface brought up")
            return True
        except OSError as exc:
            log.warning("loopback interface: expected it up or settable, got %s", exc)
            return False


def start_process(log_level: str = "INFO") -> threading.Event:
    """Set up logging, signals and loopback; the event is set when the program should stop."""
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in _SDK_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    loopback_up()
    return stop
