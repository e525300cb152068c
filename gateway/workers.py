"""``serve --workers N``: a parent that owns the listening socket and supervises N workers.

The parent binds the port once (``gateway.server.bind``) and hands the socket to N worker
processes (``multiprocessing`` spawn passes the descriptor; each serves it with
``web.SockSite``), so the kernel spreads connections over them and no other process can
join the port. A worker that dies is logged and started again, with backoff; a worker that
cannot start at all makes the parent stop the others and exit non-zero. SIGHUP (and, with
``--watch``, a change of the config or a local spec file) is passed to every worker, which
reloads on its own; SIGTERM or SIGINT makes every worker drain, and the parent exits once
they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path

from gateway import logs, metrics
from gateway.config import GatewayConfig
from gateway.configload import load_config
from gateway.errors import CannotServe, ConfigError
from gateway.lifecycle import EarlyHangup, Options, serve
from gateway.reload import build_snapshot, watch

log = logging.getLogger("gateway.workers")

FIRST_RESTART = 0.5  # seconds before a dead worker is started again, doubled each time
MAX_RESTART = 30.0
STABLE_AFTER = 30.0  # a worker that ran this long starts its slot's backoff afresh
POLL = 0.1  # seconds between looks at the workers
KILL_AFTER = 10.0  # seconds past server.shutdown_timeout before a draining worker is killed


@dataclass
class Worker:
    slot: int
    process: BaseProcess
    started: Event
    born: float
    failures: int = 0  # deaths in a row, for the backoff
    reload_pending: bool = False  # a SIGHUP for when it serves (before, it could kill it)

    def hangup(self) -> None:
        """Pass a reload on now if this worker serves, else once it does."""
        self.reload_pending = True
        if self.started.is_set() and self.process.exitcode is None and self.process.pid:
            os.kill(self.process.pid, signal.SIGHUP)
            self.reload_pending = False


class Supervisor:
    def __init__(
        self,
        sock: socket.socket,
        path: Path,
        config: GatewayConfig,
        count: int,
        level: str | None,
    ) -> None:
        self.sock = sock
        self.path = path
        #: the config the workers serve: the last one that loaded. A worker started again
        #: gets it, not whatever the file says now, so that all workers serve one config.
        self.config = config
        self.count = count
        self.level = level
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[Worker] = []
        self.stop = asyncio.Event()

    async def run(self, watch_files: bool) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop, signum)
        cleanup_metrics = metrics.prepare_multiprocess()  # the workers inherit its variable
        try:
            return await self._run(watch_files)
        finally:
            cleanup_metrics()

    async def _run(self, watch_files: bool) -> int:
        self.workers = [self._spawn(slot) for slot in range(self.count)]
        try:
            await self._wait_started()
        except CannotServe:
            await self._stop_all()
            raise
        log.info("%d workers serving", self.count)
        watcher = None
        if watch_files:
            watcher = asyncio.create_task(
                watch(self.path, lambda: self.config, self.reload, self.stop)
            )
        await self._supervise()
        if watcher is not None:
            watcher.cancel()
        await self._stop_all()
        return 0

    def reload(self, reason: str) -> None:
        """Pass a reload to every worker (each loads and checks the config itself)."""
        log.info("reload requested (%s): passing it to %d workers", reason, len(self.workers))
        with contextlib.suppress(ConfigError):  # if so, the workers refuse it and say why
            self.config = load_config(self.path)  # what a worker started from now on serves
        for w in self.workers:
            w.hangup()

    def _on_stop(self, signum: int) -> None:
        log.info("%s: draining %d workers", signal.Signals(signum).name, len(self.workers))
        self.stop.set()

    def _spawn(self, slot: int, failures: int = 0) -> Worker:
        started = self.ctx.Event()
        args = (self.sock, str(self.path), self.config, self.level, started)
        proc = self.ctx.Process(target=worker_main, args=args, name=f"gateway-worker-{slot}")
        proc.start()
        log.info("worker %d started (pid %s)", slot, proc.pid)
        return Worker(slot, proc, started, time.monotonic(), failures)

    async def _wait_started(self) -> None:
        """Until every worker serves; ``CannotServe`` if one exits first."""
        while not all(w.started.is_set() for w in self.workers):
            self._pass_pending_reloads()
            for w in self.workers:
                if w.process.exitcode is not None and not w.started.is_set():
                    raise CannotServe(
                        f"worker {w.slot} could not start (exit code {w.process.exitcode}); "
                        "its error is logged above"
                    )
            if self.stop.is_set():
                return
            await asyncio.sleep(POLL)

    async def _supervise(self) -> None:
        """Start dead workers again (with backoff) until asked to stop."""
        due: dict[int, float] = {}  # slot -> when to start it again
        while not self.stop.is_set():
            self._pass_pending_reloads()
            now = time.monotonic()
            for i, w in enumerate(self.workers):
                if w.slot not in due and w.process.exitcode is not None:
                    due[w.slot] = now + self._buried(w)
                elif w.slot in due and now >= due[w.slot]:
                    del due[w.slot]
                    self.workers[i] = self._spawn(w.slot, w.failures)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop.wait(), POLL)

    def _pass_pending_reloads(self) -> None:
        for w in self.workers:
            if w.reload_pending:
                w.hangup()

    def _buried(self, w: Worker) -> float:
        """Log a dead worker; the delay before its slot starts again."""
        pid, code = w.process.pid, w.process.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        mark_dead(pid)
        w.failures = 1 if time.monotonic() - w.born > STABLE_AFTER else w.failures + 1
        delay = min(FIRST_RESTART * 2 ** (w.failures - 1), MAX_RESTART)
        log.error("worker %d (pid %s) died (%s); starting it again in %gs", w.slot, pid, how, delay)
        return delay

    async def _stop_all(self) -> None:
        """SIGTERM every worker (each drains) and wait; kill what outlives the drain."""
        self.sock.close()  # the workers hold their own copies; nothing new queues for them
        for w in self.workers:
            if w.process.exitcode is None and w.process.pid is not None:
                os.kill(w.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + KILL_AFTER
        while any(w.process.exitcode is None for w in self.workers):
            if time.monotonic() > deadline:
                for w in self.workers:
                    if w.process.exitcode is None:
                        log.error("worker %d (pid %s) did not stop: killed", w.slot, w.process.pid)
                        w.process.kill()
                break
            await asyncio.sleep(POLL)
        for w in self.workers:
            w.process.join()
            mark_dead(w.process.pid)
        log.info("all %d workers stopped", len(self.workers))


def supervise(
    sock: socket.socket,
    path: Path,
    config: GatewayConfig,
    count: int,
    level: str | None,
    watch: bool,
) -> int:
    """Run the parent of ``count`` workers on ``sock``; returns the exit code."""
    supervisor = Supervisor(sock, path, config, count, level)
    return asyncio.run(supervisor.run(watch))


def worker_main(
    sock: socket.socket, path: str, config: GatewayConfig, level: str | None, started: Event
) -> None:
    """A worker process: serve ``config`` on ``sock`` until SIGTERM (exit 2 if it cannot).

    ``config`` is the one the other workers serve (the parent's), not the file as it is now:
    a worker started again after an edit nobody reloaded yet must not serve another config.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    early = EarlyHangup()  # a reload passed on while this worker starts is done once serving
    logs.setup("text", level or "info", worker=True)
    try:
        logs.setup(config.logging.format, level or config.logging.level, worker=True)
        snapshot = build_snapshot(config)
    except ConfigError as e:
        log.error("cannot start: %s", e)
        sys.exit(2)
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    options = Options(Path(path), on_started=started.set, parent_sentinel=sentinel, early=early)
    try:
        serve(sock, snapshot, options)
    except (ConfigError, CannotServe) as e:  # e.g. a metrics port it cannot listen on
        log.error("cannot start: %s", e)
        sys.exit(2)


def mark_dead(pid: int | None) -> None:
    """A worker is gone: its live gauges (in flight, open streams) leave the metrics' sum."""
    if pid is not None:
        metrics.worker_died(pid)
