"""The one client for syslog receivers (SIEMs, ATNA audit repositories): RFC 5424 over TCP or TLS.

Messages are RFC 5424 (``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG``)
framed by octet counting (``LEN SP MSG``: RFC 6587 for TCP, RFC 5425 for TLS). TLS
verifies the receiver's certificate and host name against the destination's CA
(TLS 1.2 or later, as DICOM PS3.15 A.6 asks).

Syslog over TCP has no acknowledgement: a receiver that dies can lose what it had
read but not yet stored, and whatever the kernel had buffered. The client narrows
that as far as TCP allows: before each batch it checks that the receiver has not
closed the connection, and after writing it waits until the receiver's TCP stack
has acknowledged every byte (Linux: the socket's send queue is empty), so a batch
counts as sent only once it reached the receiving host. Nothing else in pamsite
opens these sockets; errors come out as :class:`SyslogError`.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
import time

from audit.destinations import Destination

try:  # Linux (and most Unixes): bytes not yet acknowledged by the peer
    import fcntl
    import termios

    _OUTQ = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - not on the supported platform
    fcntl = None
    _OUTQ = None

FACILITY_AUTHPRIV = 10
APP_NAME = "pamsite"
# The example enterprise number of RFC 5612, as RFC 5424's own examples use; a site
# that has its own private enterprise number may tell its SIEM to expect this one.
SD_ID = "pamsite@32473"
NILVALUE = "-"


class SyslogError(Exception):
    """The receiver could not be reached, refused the connection or did not take the messages."""


def printable_ascii(value: str, max_length: int) -> str:
    """``value`` as RFC 5424 header text: printable US-ASCII without spaces, cut to length; "-" if empty."""
    cleaned = "".join(char if 33 <= ord(char) <= 126 else "_" for char in value)[:max_length]
    return cleaned or NILVALUE


def sd_escape(value: str) -> str:
    """A PARAM-VALUE of structured data: '"', '\\' and ']' escaped with a backslash (RFC 5424 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424_message(
    *,
    severity: int,
    timestamp: str,
    hostname: str,
    msgid: str,
    params: dict[str, str],
    msg: bytes,
    facility: int = FACILITY_AUTHPRIV,
    app_name: str = APP_NAME,
) -> bytes:
    """One RFC 5424 message; ``params`` go into one SD-ELEMENT ``[pamsite@32473 name="value" …]``.

    ``timestamp`` is the event's time (``2025-01-31T09:30:00.000123Z``), not the sending
    time; PROCID is left out ("-"): the sender is not the process that recorded the event.
    """
    pri = facility * 8 + severity
    sd = "[" + SD_ID + "".join(f' {name}="{sd_escape(value)}"' for name, value in params.items()) + "]"
    header = " ".join(
        [
            f"<{pri}>1",
            timestamp,
            printable_ascii(hostname, 255),
            printable_ascii(app_name, 48),
            NILVALUE,
            printable_ascii(msgid, 32),
            sd,
        ]
    )
    return header.encode("utf-8") + b" " + msg


def octet_frame(message: bytes) -> bytes:
    """``MSG-LEN SP SYSLOG-MSG``: the length in octets, a space, the message."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogClient:
    """A connection to one destination; ``send`` writes whole frames and waits for them to be taken."""

    def __init__(self, destination: Destination):
        self.destination = destination
        self._sock: socket.socket | None = None

    def __enter__(self) -> SyslogClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection (and the TLS session, its certificate verified); SyslogError if not."""
        self.close()
        destination = self.destination
        where = destination.address
        try:
            raw = socket.create_connection((destination.host, destination.port), timeout=destination.timeout)
        except OSError as exc:
            raise SyslogError(f"cannot connect to {where}: {_reason(exc)}") from None
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if not destination.tls:
            self._sock = raw
            return
        try:
            context = tls_context(destination)
            self._sock = context.wrap_socket(raw, server_hostname=destination.host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise SyslogError(
                f"TLS to {where} refused: the receiver's certificate is not trusted "
                f"({exc.verify_message or exc.reason})"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise SyslogError(f"TLS to {where} failed: {_reason(exc)}") from None

    def send(self, payload: bytes) -> None:
        """Write ``payload`` (whole frames) and wait until the receiver's host acknowledged all of it.

        Reconnects first when the receiver closed the connection since the last send.
        On any failure the connection is closed and SyslogError raised: the caller
        must treat the whole payload as not delivered (and send it again later).
        """
        if self._sock is None or self._peer_closed():
            self.connect()
        sock = self._sock
        try:
            sock.sendall(payload)
            self._wait_acknowledged(sock)
        except (OSError, SyslogError) as exc:
            self.close()
            if isinstance(exc, SyslogError):
                raise
            raise SyslogError(f"sending to {self.destination.address} failed: {_reason(exc)}") from None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _peer_closed(self) -> bool:
        """True when the receiver has closed (or reset) the connection; receivers never write to us."""
        sock = self._sock
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        sock.setblocking(False)
        try:
            # Over TLS, readable may mean a TLS 1.3 session ticket: read here and ignored.
            tls = isinstance(sock, ssl.SSLSocket)
            data = sock.recv(4096) if tls else sock.recv(1, socket.MSG_PEEK)
            return data == b""
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(self.destination.timeout)

    def _wait_acknowledged(self, sock: socket.socket) -> None:
        if fcntl is None:  # pragma: no cover - elsewhere a completed write is all there is
            return
        deadline = time.monotonic() + self.destination.timeout
        delay = 0.0001
        while True:
            pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
            if pending == 0:
                return
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise SyslogError(f"{self.destination.address} dropped the connection: {os.strerror(error)}")
            if time.monotonic() > deadline:
                raise SyslogError(
                    f"{self.destination.address} did not take the messages within "
                    f"{self.destination.timeout:g} s ({pending} bytes unacknowledged)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def tls_context(destination: Destination) -> ssl.SSLContext:
    """Certificate and host name verified against ``ca`` (else the system's CAs); TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=destination.ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if destination.cert:
        context.load_cert_chain(destination.cert, destination.key)
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
