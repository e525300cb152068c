"""Log lines: text or JSON on stderr, and events with stable fields (access, tool calls).

``setup(format, level)`` configures the root logger once; ``event(logger, name, fields)``
writes one line whose fields are kept apart from the message, so the text formatter writes
them as ``key=value`` pairs and the JSON one as keys of one object per line (what Loki,
Elastic and Datadog ingest as they are). Values a client or a server chose are quoted in
text lines, so no value can start a line of its own.
"""

from __future__ import annotations

import logging
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

    def __str__(self) -> str:
        parts = []
        for key, value in self.fields.items():  # ints and None first: most values are
            kind = type(value)
            if kind is int:
                parts.append(f"{key}={value}")
            elif value is None:
                parts.append(f"{key}=-")
            else:
                parts.append(f"{key}={_text_value(value)}")
        return " ".join(parts)


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


def event(logger: logging.Logger, name: str, fields: dict[str, Any], level: int = 20) -> None:
    """One line for ``name`` (``request``, ``tool call``) with these fields, in field order.

    The record is made here rather than by ``Logger.log``, which would walk the stack to
    find the caller: an access line is written for every request.
    """
    if logger.isEnabledFor(level):
        record = logging.LogRecord(logger.name, level, "", 0, "%s %s", (name, Fields(fields)), None)
        record.event = name
        record.fields = fields
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


def setup(format: str = "text", level: str = "info", *, worker: bool = False) -> None:
    """Route every ``gateway`` log line to stderr, as text or JSON, from ``level`` up."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(WORKER_TEXT_FORMAT if worker else TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
