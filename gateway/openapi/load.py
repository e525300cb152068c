"""Read an OpenAPI document (file or URL, JSON or YAML) and every document its refs name.

The result is a ``Spec``: the parsed document, its version ("2.0", "3.0" or "3.1"; 3.2 is
read as 3.1) and a ``referencing.Registry`` holding it and its external documents, each
under its own absolute URI, so refs resolve exactly and two toolsets never share one.
External documents are fetched before conversion starts, so resolving refs is pure.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

from referencing import Registry, Specification
from referencing._core import Resolver

from gateway.openapi.parse import SpecError, parse_document

__all__ = ["Fetch", "Spec", "SpecError", "fetch_with", "load_spec", "parse_document"]

#: ``fetch(url)`` or ``fetch(url, headers)`` -> the body; raises ``SpecError`` naming the URL
Fetch = Callable[..., Awaitable[bytes]]
MAX_DOCUMENTS = 200
MAX_SPEC_BYTES = 64 * 1024 * 1024
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Spec:
    uri: str
    document: dict[str, Any]
    version: str
    registry: Registry[Any]

    def resolver(self) -> Resolver[Any]:
        return self.registry.resolver(base_uri=self.uri)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def spec_uri(source: str, base_dir: Path) -> str:
    if is_url(source):
        return source
    return (base_dir / source).resolve().as_uri()


async def load_spec(
    source: str,
    base_dir: Path,
    *,
    allow_remote_refs: bool = False,
    fetch: Fetch | None = None,
    headers: Mapping[str, str] | None = None,
) -> Spec:
    """Load a spec and the documents its refs point to; raise ``SpecError`` naming the file.

    ``headers`` (the toolset's ``spec_headers``) go with the request for the spec and for
    remote refs on the spec's own origin, never to another origin.
    """
    uri = spec_uri(source, base_dir)
    reader = _Reader(fetch, _origin(uri) if headers else None, dict(headers or {}))
    document = await reader.read(uri, source)
    if not isinstance(document, dict):
        raise SpecError(source, "not an OpenAPI document (the top level is not a mapping)")
    version = spec_version(document, source)
    resources = {uri: document}
    await _fetch_external(uri, document, resources, allow_remote_refs, reader)
    registry: Registry[Any] = Registry().with_resources(
        (u, Specification.OPAQUE.create_resource(d)) for u, d in resources.items()
    )
    return Spec(uri, document, version, registry)


def spec_version(document: dict[str, Any], source: str) -> str:
    if str(document.get("swagger", "")).startswith("2"):
        return "2.0"
    openapi = str(document.get("openapi", ""))
    if openapi.startswith("3.0"):
        return "3.0"
    if openapi.startswith(("3.1", "3.2")):
        return "3.1"
    found = document.get("openapi") or document.get("swagger")
    what = f"version {found!r} is not supported" if found else "no 'openapi' or 'swagger' field"
    raise SpecError(source, f"not an OpenAPI 2.0/3.0/3.1 document: {what}")


def _scheme(uri: str) -> str:
    return urlsplit(uri).scheme.lower()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        port = -1
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


@dataclass(frozen=True)
class _Reader:
    """Reads one document: a local file, or a URL through ``fetch`` (headers to one origin)."""

    fetch: Fetch | None
    origin: str | None  # where ``headers`` may go
    headers: dict[str, str]

    async def read(self, uri: str, source: str) -> Any:
        if _scheme(uri) == "file":
            raw = read_file(Path(url2pathname(urlsplit(uri).path)), source)
        else:
            raw = await self._fetch(uri, source)
        if len(raw) > MAX_SPEC_BYTES:
            raise SpecError(source, f"larger than {MAX_SPEC_BYTES} bytes")
        return parse_document(raw, source)

    async def _fetch(self, uri: str, source: str) -> bytes:
        if self.fetch is None:
            raise SpecError(source, "URLs cannot be fetched here")
        try:
            if self.origin is not None and _origin(uri) == self.origin:
                return await self.fetch(uri, self.headers)
            return await self.fetch(uri)
        except SpecError:
            raise
        except asyncio.TimeoutError:
            raise SpecError(source, "cannot fetch: timed out") from None
        except Exception as e:  # the network boundary: any failure names the URL
            raise SpecError(source, f"cannot fetch: {e or type(e).__name__}") from None


def read_file(path: Path, source: str) -> bytes:
    """A regular file's bytes, at most ``MAX_SPEC_BYTES + 1`` of them.

    Opened without blocking (a FIFO would wait for a writer) and checked on the open
    descriptor: a device such as ``/dev/zero`` would never end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise SpecError(source, f"cannot read the file: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpecError(source, "not a regular file")
        try:
            return f.read(MAX_SPEC_BYTES + 1)
        except OSError as e:
            raise SpecError(source, f"cannot read the file: {e.strerror or e}") from None


async def _fetch_external(
    root: str, document: Any, resources: dict[str, Any], allow_remote: bool, reader: _Reader
) -> None:
    pending = [(root, document)]
    while pending:
        base, doc = pending.pop()
        targets = sorted({t for t in (_target(base, r) for r in _refs(doc)) if t} - set(resources))
        for target in targets:
            _check_allowed(root, base, target, allow_remote)
            if len(resources) >= MAX_DOCUMENTS:
                raise SpecError(root, f"refs name more than {MAX_DOCUMENTS} documents")
            resources[target] = await reader.read(target, target)
            pending.append((target, resources[target]))


def _check_allowed(root: str, base: str, target: str, allow_remote: bool) -> None:
    scheme = _scheme(target)
    if scheme == "file":
        if _scheme(base) != "file":
            raise SpecError(base, f"a remote document may not refer to a local file ({target})")
    elif scheme not in ("http", "https"):
        raise SpecError(base, f"$ref to {target}: only files and http(s) URLs can be read")
    elif not allow_remote:
        raise SpecError(
            root, f"remote $ref to {target} is off; set allow_remote_refs: true on the toolset"
        )


def _target(base: str, ref: str) -> str | None:
    if ref.startswith("#"):
        return None
    url, _ = urldefrag(urljoin(base, ref))
    return url or None


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                found.append(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def fetch_with(session: Any, timeout: float = 30.0) -> Fetch:
    """A ``Fetch`` over an aiohttp session: one deadline for the whole fetch, redirects
    only within the URL's origin, the body read to the end or refused past the size cap."""

    async def fetch(url: str, headers: Mapping[str, str] | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await _get(session, url, dict(headers or {}))
        except TimeoutError:
            raise SpecError(url, f"cannot fetch: timed out after {timeout:g} s") from None

    return fetch


async def _get(session: Any, url: str, headers: dict[str, str]) -> bytes:
    target = url
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(target, headers=headers, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                target = _redirect(url, target, location)
                continue
            if resp.status >= 400:
                raise SpecError(url, f"cannot fetch: HTTP {resp.status}")
            return await _read_body(resp, url)
    raise SpecError(url, f"cannot fetch: more than {MAX_REDIRECTS} redirects")


def _redirect(url: str, current: str, location: str) -> str:
    target = urljoin(current, location)
    if _origin(target) != _origin(url):
        raise SpecError(
            url, f"cannot fetch: redirected to another origin ({_origin(target)}); not followed"
        )
    return target


async def _read_body(resp: Any, url: str) -> bytes:
    data = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        data += chunk
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(url, f"cannot fetch: larger than {MAX_SPEC_BYTES} bytes (the limit)")
    return bytes(data)
