"""Where the audit trail is forwarded: ``AUDIT_FORWARD`` parsed into destinations.

No Django models here: settings import this module to refuse a bad value at start-up.

``AUDIT_FORWARD`` is a comma-separated list of URLs::

    syslog+tcp://siem.hospital.example:514?format=json
    syslog+tls://atna.hospital.example:6514?format=dicom&ca=/etc/pamsite/atna-ca.pem

- scheme ``syslog+tcp`` (RFC 6587 octet counting, port 514 by default) or ``syslog+tls``
  (RFC 5425, port 6514 by default; the server's certificate is verified, host name
  included, against ``ca`` or else the system's trust store);
- ``format``: ``json`` (the default), ``cef`` or ``dicom`` (DICOM PS3.15 A.5 XML);
- ``ca``, ``cert``, ``key``: PEM files for TLS (``cert``/``key``: a client certificate,
  for receivers that require one); they must exist and be readable;
- ``timeout``: seconds for connecting and for each batch to be accepted (default 10);
- ``name``: the destination's name for its cursor and the status page (default
  ``host:port/format``). Renaming a destination starts its cursor again from the
  first event.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

SCHEMES = {"syslog+tcp": 514, "syslog+tls": 6514}
FORMATS = ("json", "cef", "dicom")
OPTIONS = {"format", "ca", "cert", "key", "timeout", "name"}
DEFAULT_TIMEOUT = 10.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,99}$")


@dataclass(frozen=True)
class Destination:
    """One SIEM or audit repository that receives every audit event, in order."""

    name: str
    scheme: str
    host: str
    port: int
    format: str
    ca: str = ""
    cert: str = ""
    key: str = ""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def tls(self) -> bool:
        return self.scheme == "syslog+tls"

    @property
    def address(self) -> str:
        """``scheme://host:port`` for messages and the status page (no file paths)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.address}, {self.format})"


def parse_destination(url: str) -> Destination:
    """One destination from its URL; ValueError saying what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be one of {', '.join(SCHEMES)}, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if parts.username or parts.password:
        raise ValueError(f"{url!r}: syslog destinations take no user or password")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"{url!r}: only scheme://host:port?options is understood")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"{url!r}: the options are not name=value pairs") from None
    options: dict[str, str] = {}
    for option, value in pairs:
        if option not in OPTIONS:
            raise ValueError(f"{url!r}: unknown option {option!r} (known: {', '.join(sorted(OPTIONS))})")
        if option in options:
            raise ValueError(f"{url!r}: option {option!r} given twice")
        options[option] = value

    fmt = options.get("format", "json")
    if fmt not in FORMATS:
        raise ValueError(f"{url!r}: format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    tls = parts.scheme == "syslog+tls"
    for option in ("ca", "cert", "key"):
        if option in options and not tls:
            raise ValueError(f"{url!r}: {option}= is for syslog+tls destinations only")
        path = options.get(option, "")
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{url!r}: {option} file {path!r} does not exist or cannot be read")
    if bool(options.get("cert")) != bool(options.get("key")):
        raise ValueError(f"{url!r}: a client certificate needs both cert= and key=")
    timeout = DEFAULT_TIMEOUT
    if "timeout" in options:
        try:
            timeout = float(options["timeout"])
        except ValueError:
            raise ValueError(f"{url!r}: timeout must be a number of seconds") from None
        if not 0.1 <= timeout <= 300:
            raise ValueError(f"{url!r}: timeout must be between 0.1 and 300 seconds")
    port = port or SCHEMES[parts.scheme]
    host = parts.hostname
    name = options.get("name") or f"{host}:{port}/{fmt}"
    if not _NAME_RE.match(name):
        raise ValueError(f"{url!r}: name must be up to 100 letters, digits and _.:/@-")
    return Destination(
        name=name,
        scheme=parts.scheme,
        host=host,
        port=port,
        format=fmt,
        ca=options.get("ca", ""),
        cert=options.get("cert", ""),
        key=options.get("key", ""),
        timeout=timeout,
    )


def parse_destinations(value: str) -> tuple[Destination, ...]:
    """Every destination of a comma-separated list (blank: none); ValueError on any bad one."""
    destinations = tuple(parse_destination(url.strip()) for url in value.split(",") if url.strip())
    names = [d.name for d in destinations]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"two destinations share the name {repeated[0]!r}: give one a name= option "
            "(each destination keeps its own cursor)"
        )
    return destinations
