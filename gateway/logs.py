"""Log lines: text or JSON on stderr, and events with stable fields (access, tool calls).

``setup(format, level)`` configures the root logger once; ``event(logger, name, fields)``
writes one line whose fields are kept apart from the message, so the text formatter writes
them as ``key=value`` pairs and the JSON one as keys of one object per line (what Loki,
Elastic and Datadog ingest as they are). Values a client or a server chose are quoted in
text lines, so no value can start a line of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
#: a value with any other character is written as a JSON string
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9_.:/?&=%+@,\[\]-]")


class Fields:
    """An event's fields; rendered as ``key=value`` pairs only if a text line is written."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def as_dict(self) -> dict[str, Any]:
        """The fields in order (a subclass may build them only now, for JSON)."""
        return self.fields

    def __str__(self) -> str:
        # ints and None first, inline: most values are
        return " ".join(
            [
                f"{k}={v}" if type(v) is int else f"{k}=-" if v is None else f"{k}={_text_value(v)}"
                for k, v in self.fields.items()
            ]
        )


def plain(text: str | None) -> str:
    """A string as a text-line value: as it is when plain, else as a JSON string; None: -."""
    if text is None:
        return "-"
    return text if text and _NOT_PLAIN.search(text) is None else orjson.dumps(text).decode()


def _text_value(value: Any) -> str:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str:
        return value if value and _NOT_PLAIN.search(value) is None else orjson.dumps(value).decode()
    if value is None:
        return "-"
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        return f"{value:.1f}"
    return _text_value(str(value))


def event(
    logger: logging.Logger, name: str, fields: dict[str, Any] | Fields, level: int = 20
) -> None:
    """One line for ``name`` (``request``, ``tool call``) with these fields, in field order.

    When the gateway's own handler (``setup``) is the only one the line would reach, it
    formats and queues the line itself: no ``LogRecord``, one write per event-loop turn.
    Otherwise (handlers added by tests or an embedding application) the line is an ordinary
    record, made here rather than by ``Logger.log``, which would walk the stack.
    """
    if not logger.isEnabledFor(level):
        return
    if not isinstance(fields, Fields):
        fields = Fields(fields)
    handler = _handler
    if handler is not None and handler.sole_handler_of(logger):
        handler.event(level, logger.name, name, fields)
        return
    record = logging.LogRecord(logger.name, level, "", 0, "%s %s", (name, fields), None)
    record.event = name
    record.fields = fields.as_dict()
    logger.handle(record)


class TextFormatter(logging.Formatter):
    """``logging``'s own layout, with the date formatted once a second instead of per line."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._date},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, then the event's fields or a message."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._date = ""

    def _iso(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._date}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            out["event"] = record.event  # type: ignore[attr-defined]
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


#: event lines are written at most this many seconds after they were queued ...
WRITE_DELAY = 0.05
#: ... or as soon as this many are queued
MAX_QUEUED = 256


class GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, text or JSON; events (``event``) are formatted directly and written in batches.

    Events are queued as they are (their fields already final) and formatted and written
    together ``WRITE_DELAY`` after the first of them (at once without a running loop), before
    any ordinary record, and when logging shuts down: one write for many access lines, and
    the formatting done in one tight loop rather than between the requests' own work.
    """

    def __init__(self, format: str, worker: bool) -> None:
        super().__init__(sys.stderr)
        self.json = format == "json"
        self.setFormatter(
            JsonFormatter()
            if self.json
            else TextFormatter(WORKER_TEXT_FORMAT if worker else TEXT_FORMAT)
        )
        self.pid = os.getpid()
        self.worker = worker
        #: (time, level, logger, event, fields) of the lines not written yet
        self._queued: list[tuple[float, int, str, str, Fields]] = []
        self._second = -1
        self._date = ""

    def sole_handler_of(self, logger: logging.Logger) -> bool:
        node: logging.Logger | None = logger
        while node is not None and node.parent is not None:
            if node.handlers or not node.propagate:
                return False
            node = node.parent
        return node is not None and len(node.handlers) == 1 and node.handlers[0] is self

    def event(self, level: int, logger: str, name: str, fields: Fields) -> None:
        """Queue the event; it is formatted with the others when they are written."""
        queued = self._queued
        queued.append((time.time(), level, logger, name, fields))
        if len(queued) == 1:
            try:
                asyncio.get_running_loop().call_later(WRITE_DELAY, self.write_queued)
            except RuntimeError:
                self.write_queued()
        elif len(queued) >= MAX_QUEUED:
            self.write_queued()

    def _line(self, now: float, level: int, logger: str, name: str, fields: Fields) -> str:
        if self.json:
            out = {
                "time": self._stamp(now, "%Y-%m-%dT%H:%M:%S", time.gmtime, "."),
                "level": logging.getLevelName(level).lower(),
                "logger": logger,
                "pid": self.pid,
                "event": name,
            }
            out.update(fields.as_dict())
            return orjson.dumps(out, default=str).decode() + "\n"
        where = f"{logger}[{self.pid}]" if self.worker else logger
        stamp = self._stamp(now, "%Y-%m-%d %H:%M:%S", time.localtime, ",")
        return f"{stamp} {logging.getLevelName(level)} {where} {name} {fields}\n"

    def _stamp(self, now: float, layout: str, convert: Any, point: str) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._date = time.strftime(layout, convert(second))
        millis = f"{point}{int((now - second) * 1000):03d}"
        return self._date + millis + ("Z" if point == "." else "")

    def write_queued(self) -> None:
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        data = ""
        self.acquire()
        try:
            data = "".join([self._line(*event) for event in queued])
            self.stream.write(data)
            self.stream.flush()
        except Exception:
            self.handleError(logging.LogRecord("gateway", 40, "", 0, data, None, None))
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        self.write_queued()  # lines keep their order
        super().emit(record)

    def flush(self) -> None:
        self.write_queued()
        super().flush()


_handler: GatewayHandler | None = None


def setup(format: str = "text", level: str = "info", *, worker: bool = False) -> None:
    """Route every ``gateway`` log line to stderr, as text or JSON, from ``level`` up."""
    global _handler
    handler = GatewayHandler(format, worker)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if old is _handler:
            old.write_queued()  # what it still holds goes out first
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    _handler = handler
