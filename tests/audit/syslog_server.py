"""A real syslog receiver for the tests: RFC 5424 messages in octet-counted frames over TCP or TLS.

It listens on 127.0.0.1, takes frames (RFC 6587 / RFC 5425 "LEN SP MSG"), parses each
message's header and structured data, and keeps them in arrival order. It can be
stopped (listener and connections closed, as a receiver that goes down) and started
again on the same port. Also here: a throwaway CA and server certificates made with
``cryptography`` for the TLS receiver.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HEADER = re.compile(rb"^<(\d{1,3})>(\d) (\S+) (\S+) (\S+) (\S+) (\S+) ")


@dataclass
class SyslogMessage:
    """One RFC 5424 message as received."""

    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd_id: str | None
    params: dict[str, str]
    msg: bytes
    raw: bytes

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8

    @property
    def seq(self) -> int:
        return int(self.params["seq"])


def parse_rfc5424(data: bytes) -> SyslogMessage:
    """Parse one message; ValueError when it is not RFC 5424 with at most one SD-ELEMENT."""
    match = HEADER.match(data)
    if not match:
        raise ValueError(f"not an RFC 5424 header: {data[:80]!r}")
    pri, version, timestamp, hostname, app_name, procid, msgid = match.groups()
    rest = data[match.end() :]
    sd_id, params = None, {}
    if rest.startswith(b"-"):
        rest = rest[1:]
    elif rest.startswith(b"["):
        end_id = min(i for i in (rest.find(b" "), rest.find(b"]")) if i > 0)
        sd_id = rest[1:end_id].decode("ascii")
        i = end_id
        while rest[i : i + 1] == b" ":
            name_end = rest.index(b'="', i)
            name = rest[i + 1 : name_end].decode("ascii")
            j, value = name_end + 2, bytearray()
            while rest[j : j + 1] != b'"':
                if rest[j : j + 1] == b"\\" and rest[j + 1 : j + 2] in (b'"', b"\\", b"]"):
                    j += 1
                value += rest[j : j + 1]
                j += 1
            params[name] = value.decode("utf-8")
            i = j + 1
        if rest[i : i + 1] != b"]":
            raise ValueError(f"structured data not closed: {rest[:120]!r}")
        rest = rest[i + 1 :]
    else:
        raise ValueError(f"no structured data: {rest[:80]!r}")
    if rest and not rest.startswith(b" "):
        raise ValueError("no space before MSG")
    return SyslogMessage(
        pri=int(pri),
        version=int(version),
        timestamp=timestamp.decode("ascii"),
        hostname=hostname.decode("ascii"),
        app_name=app_name.decode("ascii"),
        procid=procid.decode("ascii"),
        msgid=msgid.decode("ascii"),
        sd_id=sd_id,
        params=params,
        msg=rest[1:],
        raw=data,
    )


@dataclass
class SyslogReceiver:
    """A threaded TCP (or, with ``tls``, TLS) syslog receiver on 127.0.0.1."""

    tls: ssl.SSLContext | None = None
    port: int = 0
    messages: list[SyslogMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> SyslogReceiver:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop.clear()
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Go down: stop listening and close every connection."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[SyslogMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.01)
        raise AssertionError(
            f"expected {count} messages, received {len(self.messages)}; errors {self.errors}"
        )

    def settle(self, quiet: float = 0.3) -> list[SyslogMessage]:
        """The messages once nothing more has arrived for ``quiet`` seconds."""
        seen = -1
        while seen != len(self.messages):
            seen = len(self.messages)
            time.sleep(quiet)
        return list(self.messages)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(0.05)
        except (ssl.SSLError, OSError) as exc:
            with self._lock:
                self.errors.append(f"handshake: {exc}")
            conn.close()
            return
        with self._lock:
            self.connections += 1
            self._open.append(conn)
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except OSError:
                break
            if not chunk:
                break
            buffer += chunk
            while True:
                space = buffer.find(b" ")
                if space < 0:
                    break
                length_text = buffer[:space]
                if not length_text.isdigit() or len(length_text) > 10:
                    with self._lock:
                        self.errors.append(f"bad frame length {length_text[:20]!r}")
                    conn.close()
                    return
                length = int(length_text)
                if len(buffer) < space + 1 + length:
                    break
                frame, buffer = buffer[space + 1 : space + 1 + length], buffer[space + 1 + length :]
                try:
                    message = parse_rfc5424(frame)
                except ValueError as exc:
                    with self._lock:
                        self.errors.append(str(exc))
                    continue
                with self._lock:
                    self.messages.append(message)
        conn.close()


# --- certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost signed by it, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path
    wrong_name_cert: Path
    wrong_name_key: Path

    def server_context(self, *, wrong_name: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if wrong_name:
            context.load_cert_chain(self.wrong_name_cert, self.wrong_name_key)
        else:
            context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server(ca_key, ca_cert, names: list[str]):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    alt_names = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, cert=None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def make_tls_files(directory: Path) -> TlsFiles:
    ca_key, ca_cert = _make_ca("pamsite test syslog CA")
    server_key, server_cert = _make_server(ca_key, ca_cert, ["127.0.0.1", "localhost"])
    wrong_key, wrong_cert = _make_server(ca_key, ca_cert, ["siem.elsewhere.example"])
    _, other_cert = _make_ca("some other CA")
    return TlsFiles(
        ca=_write(directory / "ca.pem", cert=ca_cert),
        server_cert=_write(directory / "server.pem", cert=server_cert),
        server_key=_write(directory / "server.key", key=server_key),
        other_ca=_write(directory / "other-ca.pem", cert=other_cert),
        wrong_name_cert=_write(directory / "wrong-name.pem", cert=wrong_cert),
        wrong_name_key=_write(directory / "wrong-name.key", key=wrong_key),
    )
