"""Log lines: text or JSON on stderr, and events with stable fields (access, tool calls).

``setup(format, level)`` configures the root logger once; ``event(logger, name, fields)``
writes one line whose fields are kept apart from the message, so the text formatter writes
them as ``key=value`` pairs and the JSON one as keys of one object per line (what Loki,
Elastic and Datadog ingest as they are). Values a client or a server chose are quoted in
text lines, so no value can start a line of its own.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/?&=[]%+@,")


class Fields:
    """An event's fields; rendered as ``key=value`` pairs only if a text line is written."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={_text_value(v)}" for k, v in self.fields.items())


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return orjson.dumps(text).decode()


def event(logger: logging.Logger, name: str, fields: dict[str, Any], level: int = 20) -> None:
    """One line for ``name`` (``request``, ``tool call``) with these fields, in field order."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s %s", name, Fields(fields), extra={"event": name, "fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, then the event's fields or a message."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
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


def _iso(created: float) -> str:
    whole = int(created)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{stamp}.{int((created - whole) * 1000):03d}Z"


def setup(format: str = "text", level: str = "info", *, worker: bool = False) -> None:
    """Route every ``gateway`` log line to stderr, as text or JSON, from ``level`` up."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(WORKER_TEXT_FORMAT if worker else TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
