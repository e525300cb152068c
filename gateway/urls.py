"""What a URL or a header in the config may be: checked at load time, never at request time.

``http_url`` is every http(s) URL the config holds (models, toolsets, token endpoints, the
OTLP collector); ``upstream_url`` a model's ``base_url`` (also ``mock://``); ``check_headers``
the names and values of configured headers.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

MOCK_URL = "mock://"
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_URL_EXAMPLE = "e.g. http://127.0.0.1:8000/v1"


def http_url(value: str) -> str:
    """An http(s) URL that the client can always use: checked here, never at request time."""
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} contains spaces or line breaks; remove them")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise ValueError(
            f"{value!r} is not a valid URL ({_url_reason(e)}); {_URL_EXAMPLE}"
        ) from None
    if "://" not in value:
        raise ValueError(f"{value!r} has no scheme; write it as http://{value}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"must be an http:// or https:// URL with a host, got {value!r}; {_URL_EXAMPLE}"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{parts.scheme}://{parts.hostname}...: credentials in the URL are not supported; "
            "put the key in api_key (models) or auth (tools)"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} has a query or fragment; remove the part after ? or #")
    if port is None and parts.netloc.endswith(":"):
        raise ValueError(f"{value!r} has an empty port; remove the ':' or add the port number")
    if port == 0:
        raise ValueError(f"{value!r}: port 0 cannot be connected to; use the server's port")
    _check_host(value, parts.hostname or "")
    return value.rstrip("/")


def _url_reason(e: ValueError) -> str:
    text = str(e)
    if "could not be cast" in text:
        return "the port must be a number"
    if "out of range" in text:
        return "the port must be between 1 and 65535"
    return text


def _check_host(value: str, host: str) -> None:
    if not host:
        raise ValueError(f"{value!r} has no host; {_URL_EXAMPLE}")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if host.rstrip(".").rpartition(".")[2].isdigit():  # ends in a number: an IPv4 address
        raise ValueError(f"{value!r}: {host!r} is not a valid IPv4 address; {_URL_EXAMPLE}")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    if not ascii_host or not all(_LABEL.match(label) for label in ascii_host.split(".")):
        raise ValueError(f"{value!r}: {host!r} is not a valid host name; {_URL_EXAMPLE}")


def upstream_url(value: str) -> str:
    """A model's base_url: http(s), or ``mock://`` for the built-in mock (``gateway.mock``)."""
    if value.startswith("mock:"):
        if value not in (MOCK_URL, "mock:"):
            raise ValueError(f"the built-in mock is written {MOCK_URL!r}, got {value!r}")
        return MOCK_URL
    return http_url(value)


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not a valid header name (letters, digits, '-')")
        if "\r" in value or "\n" in value:
            raise ValueError(f"the value of header {name!r} contains a line break; remove it")
        if _CONTROL.search(value):  # aiohttp refuses them: every request would fail
            raise ValueError(f"the value of header {name!r} contains a control character")
    return headers
