"""One serving process's life: the listening socket, signals, reload, the drain on SIGTERM.

``bind`` makes the listening socket (in the parent, before any worker exists: a port in use
is an error at once, and without ``SO_REUSEPORT`` no other process can join the port);
``serve`` runs the app on it until SIGTERM or SIGINT, then drains: ``/readyz`` answers 503,
the socket stops accepting, requests and streams in flight finish (up to
``server.shutdown_timeout``), and the process exits 0. SIGHUP reloads the config.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.app import create_app
from gateway.errors import ConfigError
from gateway.loop_handler import warm_embeddings
from gateway.observe import OBSERVER
from gateway.reload import Reloader, log_missing, watch
from gateway.state import UPSTREAM, Snapshot, State

log = logging.getLogger("gateway")

LEFTOVER_GRACE = 1.0  # seconds aiohttp gets, after the drain, to end what is left


def bind(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The listening socket, or a ``ConfigError`` saying why not and what to change."""
    try:
        return socket.create_server((host, port), backlog=backlog)
    except OSError as e:
        raise _listen_error(e, host, port) from None


def _listen_error(e: OSError, host: str, port: int) -> ConfigError:
    fixes = {
        errno.EADDRINUSE: "another process is already listening on this port; stop it, or "
        "choose another port with --port or server.port",
        errno.EACCES: "this user may not listen on this port (ports below 1024 need "
        "privileges); choose another port with --port or server.port",
        errno.EADDRNOTAVAIL: "this machine has no such address; use --host or server.host "
        "(127.0.0.1 for this machine only, 0.0.0.0 for every interface)",
    }
    if isinstance(e, socket.gaierror):
        reason = f"cannot resolve the host ({e.strerror or e}); use --host or server.host"
    else:
        reason = fixes.get(e.errno or 0, f"{e.strerror or e}; check --host/--port")
    return ConfigError(f"{host}:{port}", [reason], headline="cannot listen")


class EarlyHangup:
    """Remembers a SIGHUP that comes before serving starts (the socket is bound first, so
    clients and scripts may see the port open while the specs still load): once serving,
    it becomes a reload, since the config read at start-up may be older than the signal."""

    def __init__(self) -> None:
        self.seen = False
        signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self, signum: int, frame: object) -> None:
        self.seen = True


@dataclass(frozen=True)
class Options:
    """What ``serve`` needs besides the socket and the first snapshot."""

    path: Path  # the config file, read again on reload
    watch: bool = False  # reload on file changes (single process; the parent watches for workers)
    on_started: Callable[[], None] = lambda: None
    #: a worker's: readable once its parent is gone (then it drains and exits)
    parent_sentinel: int | None = None
    early: EarlyHangup | None = None


def serve(sock: socket.socket, snapshot: Snapshot, options: Options) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT, then drain; returns when all is done."""
    _install_uvloop()
    asyncio.run(_serve(sock, snapshot, options))


async def _serve(sock: socket.socket, snapshot: Snapshot, options: Options) -> None:
    state = State(snapshot)
    app = create_app(snapshot.config, state=state)
    warming: set[asyncio.Future[None]] = set()

    def warm(new: Snapshot) -> None:
        """A reloaded snapshot's functions are embedded now, not on a client's request."""
        for task in warm_embeddings(new, app[UPSTREAM]):
            warming.add(task)
            task.add_done_callback(warming.discard)

    reloader = Reloader(state, options.path, app[OBSERVER], on_swap=warm)
    stop = _handle_signals(reloader)
    if options.early is not None and options.early.seen:
        reloader.request("SIGHUP during start-up")
    if options.parent_sentinel is not None:
        fd = options.parent_sentinel
        asyncio.get_running_loop().add_reader(fd, _orphaned, stop, fd)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=LEFTOVER_GRACE,
    )
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    tasks = [asyncio.create_task(reloader.run())]
    if options.watch:
        current = lambda: state.current.config  # noqa: E731
        tasks.append(asyncio.create_task(watch(options.path, current, reloader.request, stop)))
    _freeze_startup_heap()
    host, port = sock.getsockname()[:2]
    log.info("serving on http://%s:%d (config %s)", host, port, snapshot.digest)
    log_missing(snapshot)
    options.on_started()
    await stop.wait()
    for task in tasks:
        task.cancel()
    await drain(runner, site, state)


def _handle_signals(reloader: Reloader) -> asyncio.Event:
    """SIGHUP reloads; SIGTERM and SIGINT set the returned event (the drain starts)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.request, "SIGHUP")
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _stop_once, stop, signum)
    return stop


def _orphaned(stop: asyncio.Event, fd: int) -> None:
    asyncio.get_running_loop().remove_reader(fd)
    if not stop.is_set():
        log.error("the parent process is gone: draining")
        stop.set()


def _stop_once(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        log.info("%s: already draining", signal.Signals(signum).name)
        return
    log.info("%s: draining", signal.Signals(signum).name)
    stop.set()


async def drain(runner: web.AppRunner, site: web.BaseSite, state: State) -> None:
    """Stop accepting, let what is in flight finish (bounded), then close everything."""
    state.draining = True
    timeout = state.current.config.server.shutdown_timeout
    await site.stop()
    log.info(
        "stopped accepting; %d request(s) in flight, waiting up to %gs", state.inflight, timeout
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while state.inflight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if state.inflight:
        log.warning("server.shutdown_timeout reached: cutting %d request(s)", state.inflight)
    await runner.cleanup()
    log.info("stopped")


def _freeze_startup_heap() -> None:
    """Keep what start-up built (config, tools, schemas, modules) out of the cyclic GC.

    Every request allocates enough (a parsed body, its messages) to trigger collections;
    without this each full one walks the whole start-up heap again. In the bench it took
    the 30 KB-body throughput at concurrency 32 from 0.71-0.74 to 0.84-1.13 of the floor,
    and the gateway's p99 there below the floor's. A reload freezes its new snapshot too
    (``gateway.reload``).
    """
    gc.collect()
    gc.freeze()


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
