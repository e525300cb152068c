"""Config snapshots built off the serving path: at start-up, on reload, for missing toolsets.

A reload (SIGHUP, or a file change with ``serve --watch``) loads and checks the whole new
config, specs fetched and converted, in a thread with its own event loop, and only then
swaps it in (``State.swap``): requests in flight finish on the snapshot they started with.
A config that fails is refused with ``gateway check``'s errors and the old one keeps serving.

At start-up a toolset whose spec cannot be loaded does not stop the gateway: the snapshot
records it as missing (``Snapshot.missing``, shown by ``/readyz``), its models are served
without it, and ``Reloader`` retries it with backoff and swaps in a snapshot with it once it
loads.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.configload import load_config
from gateway.errors import ConfigError
from gateway.observe import Observer
from gateway.openapi.load import Spec, fetch_with, is_url
from gateway.state import Snapshot, State
from gateway.tools import convert_all, load_specs
from gateway.upstream import new_session

log = logging.getLogger("gateway.reload")

FIRST_RETRY = 1.0  # seconds before the first retry of a missing toolset, doubled each time
MAX_RETRY = 60.0
#: settings a running process cannot take from a new config: the socket, the HTTP server's
#: connection settings, the log handlers and the observer are made once, at start-up. A
#: reload that changes one logs that a restart is needed.
NOT_RELOADABLE = (
    "server.host",
    "server.port",
    "server.header_timeout",
    "logging",
    "metrics",
    "tracing",
)


def build_snapshot(config: GatewayConfig, current: Snapshot | None = None) -> Snapshot:
    """Load every spec of ``config`` and build its snapshot (blocking: own event loop).

    At start-up (no ``current``) a toolset whose spec fails is left out and recorded as
    missing. On a reload any spec error refuses the config (``ConfigError`` with every
    error), except for a toolset that is missing now and whose settings did not change: it
    stays missing and keeps being retried.
    """
    specs, failed = asyncio.run(_load_specs(config, None))
    if current is not None:
        refused = [p for n, p in failed.items() if not _still_missing(n, config, current)]
        if refused:
            count = f"{len(refused)} of {len(config.tools)} toolset spec(s)"
            raise ConfigError("tools", refused, headline=f"{count} could not be loaded")
    return Snapshot.build(config, convert_all(config, specs), failed)


def retry_missing(current: Snapshot) -> Snapshot | None:
    """The current snapshot with any missing toolset that now loads; None if none does."""
    config = current.config
    specs, failed = asyncio.run(_load_specs(config, set(current.missing)))
    if not specs:
        return None
    specs = {**current.tools.specs, **specs}
    return Snapshot.build(config, convert_all(config, specs), failed)


async def _load_specs(
    config: GatewayConfig, names: Collection[str] | None
) -> tuple[dict[str, Spec], dict[str, str]]:
    if not config.tools:
        return {}, {}
    session = new_session()
    try:
        return await load_specs(config, fetch_with(session), names)
    finally:
        await session.close()


def _still_missing(name: str, config: GatewayConfig, current: Snapshot) -> bool:
    before = current.toolsets.get(name)
    return name in current.missing and before == next(t for t in config.tools if t.name == name)


class Reloader:
    """Reloads on request (coalesced: one reload at a time, one more if asked meanwhile) and
    retries missing toolsets with backoff; ``run`` is the task that does both."""

    def __init__(
        self,
        state: State,
        path: Path,
        observer: Observer,
        on_swap: Callable[[Snapshot], object] | None = None,
    ) -> None:
        self.state = state
        self.path = path
        self.observer = observer  # counts reloads, shows the digest and missing toolsets
        #: called with each snapshot swapped in (e.g. to start embedding its functions)
        self.on_swap = on_swap
        self._wanted = asyncio.Event()

    def request(self, reason: str) -> None:
        """Ask for a reload (from a signal handler or the file watcher); returns at once."""
        log.info("reload requested (%s)", reason)
        self._wanted.set()

    async def run(self) -> None:
        delay = FIRST_RETRY
        while True:
            wait = delay if self.state.current.missing else None
            try:
                await asyncio.wait_for(self._wanted.wait(), wait)
            except asyncio.TimeoutError:
                await self._retry()
                delay = min(delay * 2, MAX_RETRY)
                continue
            self._wanted.clear()
            await self.reload()
            delay = FIRST_RETRY

    async def reload(self) -> bool:
        """Load the config file into a new snapshot and swap it in; False if refused."""
        current = self.state.current
        try:
            config = await asyncio.to_thread(load_config, self.path)
            new = await asyncio.to_thread(build_snapshot, config, current)
        except ConfigError as e:
            log.error("reload refused, still serving config %s:\n%s", current.digest, e)
            self.observer.reloaded(False)
            return False
        except Exception:  # a bug must not end reloads for the life of the process
            log.exception("reload failed, still serving config %s", current.digest)
            self.observer.reloaded(False)
            return False
        if self.state.draining:
            return False
        self._swap(new, "reload")
        self.observer.reloaded(True, new.digest)
        return True

    async def _retry(self) -> None:
        current = self.state.current
        names = ", ".join(current.missing)
        log.info("retrying the spec of toolset(s) %s", names)
        try:
            new = await asyncio.to_thread(retry_missing, current)
        except Exception:  # as for a reload: logged, and retried later
            log.exception("retrying toolset(s) %s failed", names)
            return
        if new is None:
            log.warning("toolset(s) %s still missing", names)
        elif self.state.current is current:  # no reload happened meanwhile
            self._swap(new, "missing toolset(s) loaded")

    def _swap(self, new: Snapshot, why: str) -> None:
        old = self.state.swap(new)
        _log_unreloadable(old.config, new.config)
        log_missing(new)
        self.observer.toolsets(new.toolsets, new.missing)
        log.info(
            "%s: now serving config %s (was %s): %d model(s), %d toolset(s)%s",
            why,
            new.digest,
            old.digest,
            len(new.config.models),
            len(new.config.tools),
            f", missing: {', '.join(new.missing)}" if new.missing else "",
        )
        _freeze_new()
        if self.on_swap is not None:
            self.on_swap(new)


def _freeze_new() -> None:
    """Keep the new snapshot out of the cyclic GC's full collections, as at start-up.

    A snapshot holds no reference cycles (the one of GitHub's REST description leaves no
    unreachable objects behind), so the old one is freed by reference counting when its
    last request ends, frozen or not; only the young generations are collected first.
    """
    gc.collect(1)
    gc.freeze()


def _log_unreloadable(old: GatewayConfig, new: GatewayConfig) -> None:
    for key in NOT_RELOADABLE:
        before, after = _get(old, key), _get(new, key)
        if before != after:
            shown = f" ({before} -> {after})" if "." in key else ""
            log.warning("%s changed%s: a reload cannot apply it; restart the gateway", key, shown)


def _get(config: GatewayConfig, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def log_missing(snapshot: Snapshot) -> None:
    for name, reason in snapshot.missing.items():
        log.error("toolset %s is missing (its models are served without it): %s", name, reason)


# --- serve --watch -----------------------------------------------------------------------


def watched_files(path: Path, config: GatewayConfig) -> list[Path]:
    """The config file and every local spec file it names."""
    files = [path.resolve()]
    for ts in config.tools:
        if not is_url(ts.spec):
            files.append((config.base_dir / ts.spec).resolve())
    return files


def fingerprint(files: Iterable[Path]) -> str:
    """A hash of the files' contents (a missing file counts as empty)."""
    h = hashlib.sha256()
    for f in files:
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"\0missing")
        h.update(b"\0")
    return h.hexdigest()


async def watch(
    path: Path,
    current: Callable[[], GatewayConfig],
    reload: Callable[[str], None],
    stop: asyncio.Event,
) -> None:
    """Ask for a reload when the config file or a local spec file changes (``serve --watch``).

    The watch is on the files' directories and a change counts when the files' contents
    differ: editors that write a new file and rename it, and Kubernetes ConfigMap volumes
    (which swap a symlinked directory), are seen as well as writes in place. The files are
    those of the config being served, so a reload that names other spec files moves the watch.
    """
    from watchfiles import awatch

    seen = fingerprint(watched_files(path, current()))
    while not stop.is_set():
        dirs = _dirs(watched_files(path, current()))
        log.info("watching %s for changes", ", ".join(dirs))
        async for _changes in awatch(*dirs, stop_event=stop, debounce=400, step=50):
            files = watched_files(path, current())
            if (now := fingerprint(files)) != seen:
                seen = now
                reload("file change")
            if _dirs(files) != dirs:
                break


def _dirs(files: list[Path]) -> list[str]:
    return sorted({str(f.parent) for f in files})
