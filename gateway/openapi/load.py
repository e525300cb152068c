"""Read an OpenAPI document (file or URL, JSON or YAML) and every document its refs name.

The result is a ``Spec``: the parsed document, its version ("2.0", "3.0" or "3.1"; 3.2 is
read as 3.1) and a ``referencing.Registry`` holding it and its external documents, each
under its own absolute URI, so refs resolve exactly and two toolsets never share one.
External documents are fetched before conversion starts, so resolving refs is pure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import orjson
import yaml
from referencing import Registry, Specification
from referencing._core import Resolver

from gateway.errors import ConfigError

Fetch = Callable[[str], Awaitable[bytes]]
MAX_DOCUMENTS = 200
MAX_SPEC_BYTES = 64 * 1024 * 1024


class SpecError(ConfigError):
    """A spec cannot be read, parsed or used; ``source`` names the file or URL."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, [problem])
        self.args = (f"{source}: {problem}",)

    def __str__(self) -> str:
        return f"{self.source}: {self.problems[0]}"


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
    source: str, base_dir: Path, *, allow_remote_refs: bool = False, fetch: Fetch | None = None
) -> Spec:
    """Load a spec and the documents its refs point to; raise ``SpecError`` naming the file."""
    uri = spec_uri(source, base_dir)
    document = await _read_document(uri, source, fetch)
    if not isinstance(document, dict):
        raise SpecError(source, "not an OpenAPI document (the top level is not a mapping)")
    version = spec_version(document, source)
    resources = {uri: document}
    await _fetch_external(uri, document, resources, allow_remote_refs, fetch)
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


async def _read_document(uri: str, source: str, fetch: Fetch | None) -> Any:
    if uri.startswith("file:"):
        path = Path(url2pathname(urlsplit(uri).path))
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise SpecError(source, f"cannot read the file: {e.strerror or e}") from None
    else:
        if fetch is None:
            raise SpecError(source, "URLs cannot be fetched here")
        try:
            raw = await fetch(uri)
        except SpecError:
            raise
        except Exception as e:  # the network boundary: any failure names the URL
            raise SpecError(source, f"cannot fetch: {e or type(e).__name__}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(source, f"larger than {MAX_SPEC_BYTES} bytes")
    return parse_document(raw, source)


def parse_document(raw: bytes, source: str) -> Any:
    """JSON when it looks like JSON, else YAML; errors give the line (and column)."""
    text_start = raw.lstrip()[:1]
    if text_start in (b"{", b"["):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            if not source.endswith((".yaml", ".yml")):
                raise SpecError(source, f"line {e.lineno}, column {e.colno}: {e.msg}") from None
    try:
        data = yaml.load(raw, Loader=_SpecLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(source, f"{where}{e.problem or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(source, f"not valid YAML: {e}") from None
    return _str_keys(data)


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecLoader(_BaseLoader):  # type: ignore[misc]
    """Safe YAML, but dates stay strings: tool schemas must be JSON."""


_SpecLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


def _str_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _str_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_str_keys(v) for v in node]
    return node


async def _fetch_external(
    root: str, document: Any, resources: dict[str, Any], allow_remote: bool, fetch: Fetch | None
) -> None:
    pending = [(root, document)]
    while pending:
        base, doc = pending.pop()
        targets = sorted({t for t in (_target(base, r) for r in _refs(doc)) if t} - set(resources))
        for target in targets:
            _check_allowed(root, base, target, allow_remote)
            if len(resources) >= MAX_DOCUMENTS:
                raise SpecError(root, f"refs name more than {MAX_DOCUMENTS} documents")
            resources[target] = await _read_document(target, target, fetch)
            pending.append((target, resources[target]))


def _check_allowed(root: str, base: str, target: str, allow_remote: bool) -> None:
    if target.startswith("file:"):
        if not base.startswith("file:"):
            raise SpecError(base, f"a remote document may not refer to a local file ({target})")
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
    """A ``Fetch`` over an aiohttp session, with a timeout and a size cap."""
    import aiohttp

    async def fetch(url: str) -> bytes:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with session.get(url, timeout=client_timeout) as resp:
            if resp.status >= 400:
                raise SpecError(url, f"cannot fetch: HTTP {resp.status}")
            data = await resp.content.read(MAX_SPEC_BYTES + 1)
            return bytes(data)

    return fetch
