"""Prometheus metrics through ``prometheus_client``; summed over workers in multiprocess mode.

Every label value is bounded: endpoints are handler names, models and functions come from
the config (a model the config does not know is counted as ``unknown``), outcomes and
statuses are small fixed sets. Label children are cached on first use, so a request costs a
few dictionary lookups and ``inc``/``observe`` calls.

With ``--workers N`` the parent calls ``prepare_multiprocess()`` before it starts the
workers (each then writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``, and any
worker's ``/metrics`` returns the sum over all of them), ``worker_died(pid)`` when a worker
exits, and ``cleanup_multiprocess(dir)`` when it stops.
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "unknown"
NONE = "none"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ROUND_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 100)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The gateway's metrics, registered in a registry of their own (or the multiprocess one)."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        #: one process counts each request in plain Python, read by a collector at scrape
        #: time; workers count through prometheus_client's objects, which share files
        self.tally = None if self.multiprocess else Tally()
        if self.tally is not None:
            self.registry.register(TallyCollector(self.tally))
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by endpoint, model asked for, model that served, status",
            ["endpoint", "model", "served_model", "status"],
            registry=None,  # see tally
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from the request's arrival to its last byte",
            ["endpoint", "model"],
            buckets=DURATION_BUCKETS,
            registry=None,  # see tally
        )
        self.ttfb = Histogram(
            "gateway_time_to_first_byte_seconds",
            "Time from a streamed request's arrival to its response's first byte",
            ["endpoint", "model"],
            buckets=DURATION_BUCKETS,
            registry=None,  # see tally
        )
        self.attempts = Counter(
            "gateway_upstream_attempts",
            "Calls to upstreams, by model and outcome "
            "(ok, retried, fell_back, timeout, unreachable, no_key, 4xx, 5xx)",
            ["model", "outcome"],
            registry=None,  # see tally
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens the upstreams reported, by model that served and kind",
            ["model", "kind"],
            registry=None,  # see tally
        )
        self.tool_calls = Counter(
            "gateway_tool_calls",
            "Tool calls by toolset, function and outcome",
            ["toolset", "function", "outcome"],
            registry=reg,
        )
        self.tool_duration = Histogram(
            "gateway_tool_call_duration_seconds",
            "Time of one tool call (its HTTP request and response)",
            ["toolset"],
            buckets=TOOL_BUCKETS,
            registry=reg,
        )
        self.tool_rounds = Histogram(
            "gateway_tool_rounds",
            "Tool rounds per request, for models with gateway tools",
            ["model"],
            buckets=ROUND_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being handled",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.open_streams = Gauge(
            "gateway_open_streams",
            "Streamed responses being sent",
            registry=reg,
            multiprocess_mode="livesum",
        )
        #: in one process the two gauges read these counts at scrape time (no lock per request)
        self.requests_now = 0
        self.streams_now = 0
        if not self.multiprocess:
            self.in_flight.set_function(lambda: self.requests_now)
            self.open_streams.set_function(lambda: self.streams_now)
        self.reloads = Counter(
            "gateway_config_reloads",
            "Config reloads by outcome (ok, failed)",
            ["outcome"],
            registry=reg,
        )
        self.config_info = Gauge(
            "gateway_config_info",
            "The loaded config: 1 for its digest",
            ["digest"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.toolset_missing = Gauge(
            "gateway_toolset_missing",
            "1 while a configured toolset's spec could not be loaded (retried), else 0",
            ["toolset"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._requests: dict[tuple[str, str, str, int], tuple[Any, Any, Any]] = {}
        self._digest: str | None = None

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot path does one dictionary lookup."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    # --- per request ---------------------------------------------------------------------

    def request_started(self) -> None:
        if self.multiprocess:
            self.in_flight.inc()
        else:
            self.requests_now += 1

    def stream_started(self) -> None:
        if self.multiprocess:
            self.open_streams.inc()
        else:
            self.streams_now += 1

    def request_done(
        self,
        endpoint: str,
        model: str,
        served: str,
        status: int,
        seconds: float,
        ttfb: float | None,
    ) -> None:
        tally = self.tally
        if tally is not None:
            tally.request(endpoint, model, served, status, seconds, ttfb)
            self.requests_now -= 1
            if ttfb is not None:
                self.streams_now -= 1
            return
        key = (endpoint, model, served, status)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (
                self.requests.labels(endpoint, model, served, str(status)),
                self.duration.labels(endpoint, model),
                self.ttfb.labels(endpoint, model),
            )
        count, duration, first_byte = children
        count.inc()
        duration.observe(seconds)
        if self.multiprocess:
            self.in_flight.dec()
        else:
            self.requests_now -= 1
        if ttfb is not None:
            first_byte.observe(ttfb)
            if self.multiprocess:
                self.open_streams.dec()
            else:
                self.streams_now -= 1

    def tokens_used(self, model: str, prompt: int | None, completion: int | None) -> None:
        if self.tally is not None:
            self.tally.tokens_used(model, prompt, completion)
            return
        if prompt:
            self.child(self.tokens, model, "prompt").inc(prompt)
        if completion:
            self.child(self.tokens, model, "completion").inc(completion)

    def attempt(self, model: str, outcome: str) -> None:
        if self.tally is not None:
            key = (model, outcome)
            attempts = self.tally.attempts
            attempts[key] = attempts.get(key, 0) + 1
            return
        self.child(self.attempts, model, outcome).inc()

    def tool_call(self, toolset: str, function: str, outcome: str, seconds: float | None) -> None:
        self.child(self.tool_calls, toolset, function, outcome).inc()
        if seconds is not None:
            self.child(self.tool_duration, toolset).observe(seconds)

    def rounds(self, model: str, rounds: int) -> None:
        self.child(self.tool_rounds, model).observe(rounds)

    # --- config --------------------------------------------------------------------------

    def config_loaded(self, digest: str) -> None:
        """The config with this digest serves from now on (at start and after a reload)."""
        if self._digest == digest:
            return
        if self._digest is not None:
            if self.multiprocess:
                self.config_info.labels(self._digest).set(0)
            else:
                self.config_info.remove(self._digest)
        self.config_info.labels(digest).set(1)
        self._digest = digest

    def toolsets(self, configured: Iterable[str], missing: Collection[str]) -> None:
        """Which configured toolsets are missing now (at start and after every swap)."""
        for name in configured:
            self.toolset_missing.labels(name).set(1 if name in missing else 0)

    def reloaded(self, ok: bool, digest: str | None = None) -> None:
        """Count a reload; on success, ``digest`` is the new config's."""
        self.reloads.labels("ok" if ok else "failed").inc()
        if ok and digest is not None:
            self.config_loaded(digest)

    # --- exposition ----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format; in multiprocess mode, the sum over every worker's files."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        response = web.Response(body=self.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


class Tally:
    """Per-request counts of one process, in plain Python: a dictionary update each."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = {}
        #: per (endpoint, model): a count per bucket (the last for +Inf), then the sum
        self.durations: dict[tuple[str, str], list[float]] = {}
        self.ttfbs: dict[tuple[str, str], list[float]] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}

    def request(
        self,
        endpoint: str,
        model: str,
        served: str,
        status: int,
        seconds: float,
        ttfb: float | None,
    ) -> None:
        key = (endpoint, model, served, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        _observe(self.durations, (endpoint, model), seconds)
        if ttfb is not None:
            _observe(self.ttfbs, (endpoint, model), ttfb)

    def tokens_used(self, model: str, prompt: int | None, completion: int | None) -> None:
        if prompt:
            key = (model, "prompt")
            self.tokens[key] = self.tokens.get(key, 0) + prompt
        if completion:
            key = (model, "completion")
            self.tokens[key] = self.tokens.get(key, 0) + completion


def _observe(
    histograms: dict[tuple[str, str], list[float]], key: tuple[str, str], value: float
) -> None:
    counts = histograms.get(key)
    if counts is None:
        counts = histograms[key] = [0.0] * (len(DURATION_BUCKETS) + 2)
    counts[bisect.bisect_left(DURATION_BUCKETS, value)] += 1
    counts[-1] += value


class TallyCollector(Collector):
    """A ``Tally`` as Prometheus metric families (``prometheus_client``'s collector API)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        t = self.tally
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by endpoint, model asked for, model that served, status",
            labels=["endpoint", "model", "served_model", "status"],
        )
        for (endpoint, model, served, status), n in list(t.requests.items()):
            requests.add_metric([endpoint, model, served, str(status)], n)
        yield requests
        yield _histogram(
            "gateway_request_duration_seconds",
            "Time from the request's arrival to its last byte",
            t.durations,
        )
        yield _histogram(
            "gateway_time_to_first_byte_seconds",
            "Time from a streamed request's arrival to its response's first byte",
            t.ttfbs,
        )
        attempts = CounterMetricFamily(
            "gateway_upstream_attempts",
            "Calls to upstreams, by model and outcome "
            "(ok, retried, fell_back, timeout, unreachable, no_key, 4xx, 5xx)",
            labels=["model", "outcome"],
        )
        for labels, n in list(t.attempts.items()):
            attempts.add_metric(list(labels), n)
        yield attempts
        tokens = CounterMetricFamily(
            "gateway_tokens",
            "Tokens the upstreams reported, by model that served and kind",
            labels=["model", "kind"],
        )
        for labels, n in list(t.tokens.items()):
            tokens.add_metric(list(labels), n)
        yield tokens


def _histogram(name: str, doc: str, data: dict[tuple[str, str], list[float]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["endpoint", "model"])
    for labels, counts in list(data.items()):
        running, buckets = 0.0, []
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), counts, strict=False):
            running += n
            buckets.append((floatToGoString(bound), running))
        family.add_metric(list(labels), buckets, counts[-1])
    return family


# --- the multiprocess directory (called by the parent of the workers) ----------------------


def prepare_multiprocess() -> Callable[[], None]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory; return its cleanup.

    Call it in the parent before the workers are spawned (they inherit the variable), and
    the function it returns once they have all stopped. A directory the user set is emptied
    of old values and kept; otherwise a temporary one is made and removed at the end.
    """
    given = multiprocess_dir()
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
        return lambda: None
    made = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[MULTIPROC_ENV] = made

    def cleanup() -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)

    return cleanup


def worker_died(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight, open streams); its counts stay summed."""
    if multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
