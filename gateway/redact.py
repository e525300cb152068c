"""The one redaction helper: every configured secret, in every form it takes on the wire.

A server that echoes a request (a debug endpoint, an error that quotes the query string, a
JSON body that repeats a header) sends a credential back in the form it travelled in, or in
the form its own language writes it: percent-encoded in a query or cookie, base64 inside a
basic-auth token, escaped inside a JSON string. ``Redactor`` knows these forms for every
secret it was given and replaces each occurrence with ``[redacted]``, in one pass of one
compiled regex, shaped as a trie (common prefixes are tried once; the longest match wins).

What it matches, for a secret ``s``: ``s`` with each character that is not an ASCII letter
or digit written in any of the ways a wire format writes it, in any mix: as itself,
percent-encoded (``%2F``/``%2f``, a space also as ``+``: so ``quote``, ``quote_plus``,
JavaScript's ``encodeURIComponent``, PHP's ``urlencode`` all match), JSON-escaped
(``\\"``, ``\\/``, ``\\u00e9``, Go's ``\\u0026``) or HTML-escaped (``&amp;``,
``&#39;``); and ``s`` in base64, standard and URL-safe, with or without padding. A
basic-auth pair is given as the secret ``user:password``, whose base64 form is the token.

Secrets shorter than ``MIN_SECRET_LENGTH`` (4) characters are not redacted: replacing every
``abc`` in a response would destroy it and hide nothing worth hiding.

Order matters: redact before cutting a text to a size, and when a text was cut off (a body
read only up to a cap), drop a tail that is the beginning of a secret (``drop_partial``, in
its common forms: ``forms``) first, since the regex can only match whole secrets.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
from pydantic import SecretStr

from gateway.config import (
    BasicAuth,
    BasicCredential,
    ClientCredentials,
    GatewayConfig,
    ModelConfig,
    ToolsetConfig,
)

MARK = "[redacted]"
MIN_SECRET_LENGTH = 4
#: a header whose name contains one of these carries a credential (case-insensitive)
CREDENTIAL_HEADER_WORDS = ("auth", "key", "token", "secret", "password", "cookie", "signature")
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


class Redactor:
    """Replaces every form of the secrets it was built with; immutable once built."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}))
        pattern = _compile(self.secrets)
        self._patterns: tuple[re.Pattern[str], ...] = () if pattern is None else (pattern,)

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def including(self, extra: Iterable[str]) -> Redactor:
        """This redactor and secrets known only now (tokens fetched for one call).

        The config's compiled pattern is reused; only the new secrets are compiled (and
        ``re`` caches that too, so a token used for many calls is compiled once).
        """
        new = sorted({s for s in extra if len(s) >= MIN_SECRET_LENGTH} - set(self.secrets))
        if not new:
            return self
        out = Redactor(())
        out.secrets = tuple(sorted({*self.secrets, *new}))
        out._patterns = (*self._patterns, *filter(None, [_compile(new)]))
        return out

    def redact(self, text: str, extra: Sequence[str] = ()) -> str:
        """``text`` with every form of every secret (and of ``extra`` ones) replaced."""
        redactor = self.including(extra) if extra else self
        for pattern in redactor._patterns:
            text = pattern.sub(MARK, text)
        return text

    def redact_json(self, value: Any) -> Any:
        """A parsed JSON value with every string redacted, keys included, at any depth.

        Serialised by orjson, every string is in one form the redactor knows (escapes
        resolved), so one pass over that text is enough.
        """
        if not self._patterns:
            return value
        text = orjson.dumps(value).decode()
        redacted = self.redact(text)
        if redacted == text:
            return value
        try:
            return orjson.loads(redacted)
        except orjson.JSONDecodeError:  # a secret spanning JSON syntax: keep nothing of it
            return MARK

    def drop_partial(self, text: str) -> str:
        """``text`` without a tail that begins a secret (in any form) or the ``[redacted]`` mark.

        For a text that was cut off: the rest of a secret may be what was cut. The tail is
        decoded escape by escape (percent, JSON, HTML, ``+``), as the regex matches them, and
        compared with the start of every secret and of its base64 forms.
        """
        prefixes = self._prefix_forms
        if not prefixes:
            return text
        longest = max(len(p) for p in prefixes) * 12  # one character may take 12 on the wire
        starts = self._starts
        for i in range(max(0, len(text) - max(longest, len(MARK))), len(text)):
            if text[i] not in starts:
                continue
            tail = text[i:]
            if MARK.startswith(tail) or _begins_one_of(tail, prefixes):
                return text[:i]
        return text

    @functools.cached_property
    def _starts(self) -> frozenset[str]:
        """Characters a secret's wire form (or the mark) can begin with."""
        firsts = {s[0] for s in self.secrets} | {
            f[0] for s in self.secrets for f in _base64_forms(s)
        }
        return frozenset(firsts | set("%\\&+ ["))

    @functools.cached_property
    def _prefix_forms(self) -> tuple[bytes, ...]:
        """Every secret and its base64 forms, as bytes, ``+`` read as a space."""
        out = {_plus_as_space(s.encode("utf-8", "surrogatepass")) for s in self.secrets}
        out |= {f.encode() for s in self.secrets for f in _base64_forms(s)}
        return tuple(out)

    def cut(self, text: str, max_bytes: int) -> str:
        """The first ``max_bytes`` bytes (UTF-8) of redacted text; no partial secret at the end."""
        data = text.encode()
        if len(data) <= max_bytes:
            return text
        return self.drop_partial(data[:max_bytes].decode("utf-8", "ignore"))


def forms(secret: str) -> list[str]:
    """The common forms of one secret, as strings (the regex matches more: any mix)."""
    out = [secret, html.escape(secret)]
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        out += [encoded, _HEX_ESCAPE.sub(lambda m: m.group(0).lower(), encoded)]
    out += _base64_forms(secret)
    for escaped in (json.dumps(secret, ensure_ascii=False)[1:-1], json.dumps(secret)[1:-1]):
        out += [escaped, escaped.replace("/", "\\/"), escaped.translate(_GO_ESCAPES)]
    return out


def _base64_forms(secret: str) -> list[str]:
    raw = secret.encode("utf-8", "surrogatepass")
    out = []
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        out += [encoded, encoded.rstrip("=")]  # with and without padding
    return out


#: one character as some wire format writes it: percent, JSON and HTML escapes, or itself
_TOKEN = re.compile(
    r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\[\\/\"bfnrt]|&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[a-z]{2,6});|.",
    re.DOTALL,
)
#: an escape cut off at the end of a text
_UNFINISHED = re.compile(r"(?:%[0-9A-Fa-f]?|\\(?:u[0-9A-Fa-f]{0,3})?|&#?[xX]?[0-9A-Za-z]{0,6})\Z")
_JSON_ESCAPES = {"b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t"}


def _begins_one_of(tail: str, prefixes: tuple[bytes, ...]) -> bool:
    """Whether ``tail``, decoded, is the beginning (not the whole) of one of ``prefixes``."""
    end = tail[-12:]  # an unfinished escape is shorter than that
    unfinished = _UNFINISHED.search(end)
    body = tail[: len(tail) - len(end) + unfinished.start()] if unfinished else tail
    got = b""
    for m in _TOKEN.finditer(body):  # stops at the first token no secret continues with
        got += _plus_as_space(_decode_token(m.group()))
        prefixes = tuple(p for p in prefixes if p.startswith(got))
        if not prefixes:
            return False
    return any(len(got) < len(p) or unfinished for p in prefixes)


def _decode_token(token: str) -> bytes:
    if len(token) == 1:
        return token.encode("utf-8", "surrogatepass")
    if token[0] == "%":
        return bytes([int(token[1:], 16)])
    if token.startswith("\\u"):
        return chr(int(token[2:], 16)).encode("utf-8", "surrogatepass")
    if token[0] == "\\":
        return _JSON_ESCAPES.get(token[1], token[1].encode())
    return html.unescape(token).encode("utf-8", "surrogatepass")


def _plus_as_space(data: bytes) -> bytes:
    return data.replace(b"+", b" ")


def _forms_of(secrets: Iterable[str]) -> tuple[str, ...]:
    found = {f for s in secrets for f in forms(s) if len(f) >= MIN_SECRET_LENGTH}
    return tuple(sorted(found, key=lambda f: (-len(f), f)))


def _compile(secrets: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for all secrets, shaped as a trie of per-character patterns.

    Common prefixes are tried once, and each branch prefers to continue, so the longest
    match at a position wins (about three times faster than a longest-first alternation).
    """
    if not secrets:
        return None
    sequences = {tuple(_char_pattern(c) for c in s) for s in secrets}
    sequences |= {tuple(re.escape(c) for c in f) for s in secrets for f in _base64_forms(s)}
    trie: dict[str, dict] = {}
    for sequence in sequences:
        node = trie
        for piece in sequence:
            node = node.setdefault(piece, {})
        node[""] = {}
    return re.compile(_trie_regex(trie))


def _char_pattern(char: str) -> str:
    """Every way a wire format writes one character of a secret, as a regex."""
    if char.isascii() and char.isalnum():
        return char
    data = char.encode("utf-8", "surrogatepass")
    ways = [re.escape(char), "".join("%" + _any_case(f"{b:02x}") for b in data)]
    units = [ord(char)] if ord(char) <= 0xFFFF else _surrogates(ord(char))
    ways.append("".join(r"\\u" + _any_case(f"{u:04x}") for u in units))
    ways += [re.escape(w) for w in _OTHER_WAYS.get(char, ())]
    return "(?:" + "|".join(ways) + ")"


def _any_case(hex_digits: str) -> str:
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in hex_digits)


def _surrogates(code: int) -> list[int]:
    code -= 0x10000
    return [0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)]


#: escapes of one character other than percent-encoding and ``\\uXXXX``
_OTHER_WAYS: dict[str, tuple[str, ...]] = {
    " ": ("+",),
    '"': ('\\"', "&quot;", "&#34;"),
    "\\": ("\\\\",),
    "/": ("\\/",),
    "&": ("&amp;", "&#38;"),
    "<": ("&lt;", "&#60;"),
    ">": ("&gt;", "&#62;"),
    "'": ("&#x27;", "&#39;"),
    "\b": ("\\b",),
    "\f": ("\\f",),
    "\n": ("\\n",),
    "\r": ("\\r",),
    "\t": ("\\t",),
}


def _trie_regex(node: dict[str, dict]) -> str:
    branches = []
    for piece, child in sorted(node.items()):
        if not piece:
            continue
        run = [piece]
        while len(child) == 1 and "" not in child:  # a chain without choices: one run
            ((piece, child),) = child.items()
            run.append(piece)
        branches.append("".join(run) + _trie_regex(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if "" in node else body


# --- the secrets of a config ----------------------------------------------------------------


def is_credential_header(name: str) -> bool:
    """A header whose name suggests it carries a key (``api-key``, ``X-Auth-Token``, ...)."""
    low = name.lower()
    return any(word in low for word in CREDENTIAL_HEADER_WORDS)


def header_secrets(headers: dict[str, str]) -> list[str]:
    """The values of credential headers, and the token after an auth scheme (``Bearer x``)."""
    out = []
    for name, value in headers.items():
        if is_credential_header(name):
            out.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.isalpha():
                out.append(token.strip())
    return out


def model_secrets(model: ModelConfig) -> list[str]:
    key = [model.api_key.get_secret_value()] if model.api_key is not None else []
    return key + header_secrets(model.headers)


def toolset_secrets(toolset: ToolsetConfig) -> list[str]:
    out = header_secrets(toolset.headers)
    out += [v.get_secret_value() for v in toolset.spec_headers.values()]
    out += credential_secrets(toolset)
    auth = toolset.auth
    if auth is None:
        return out
    if isinstance(auth, BasicAuth):
        password = auth.password.get_secret_value()
        return [*out, password, f"{auth.username}:{password}"]
    value = auth.token if auth.type == "bearer" else auth.value
    return [*out, value.get_secret_value()]


def credential_secrets(toolset: ToolsetConfig) -> list[str]:
    """The values under ``credentials:`` (tokens fetched or sent per user are added per call)."""
    out = []
    for value in toolset.credentials.values():
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
        elif isinstance(value, BasicCredential):
            password = value.password.get_secret_value()
            out += [password, f"{value.username}:{password}"]
        elif isinstance(value, ClientCredentials):
            out.append(value.client_secret.get_secret_value())
    return out


def config_secrets(config: GatewayConfig) -> list[str]:
    """Every secret a config holds: model keys and credential headers, tool credentials,
    and the clients' own keys (``server.api_keys``)."""
    out = [k.get_secret_value() for k in config.server.api_keys]
    for model in config.models:
        out += model_secrets(model)
    for toolset in config.tools:
        out += toolset_secrets(toolset)
    return out


def for_config(config: GatewayConfig, extra: Iterable[str] = ()) -> Redactor:
    """The redactor for everything a config holds, plus ``extra`` secrets."""
    return Redactor([*config_secrets(config), *extra])
