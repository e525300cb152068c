"""The deadline of one client request: its model's ``request_timeout``, from when it is routed.

Every upstream round, retry, fallback and tool call of the request, and a stream to its
last byte, run inside ``Deadline.scope()``. When it passes, what is running is cancelled
and ``Deadline.passed()`` is the error: a 504 before a response started, the usual SSE
error event after.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from gateway.errors import UpstreamTimeout
from gateway.routing import Route

if sys.version_info >= (3, 11):
    from asyncio import timeout_at
else:  # pragma: no cover - aiohttp depends on async_timeout before 3.11
    from async_timeout import timeout_at


class Deadline:
    def __init__(self, route: Route) -> None:
        self.route = route
        self.when = asyncio.get_running_loop().time() + route.request_timeout

    def scope(self) -> Any:
        """An ``async with`` block that raises ``TimeoutError`` at the deadline."""
        return timeout_at(self.when)

    def passed(self) -> UpstreamTimeout:
        route = self.route
        return UpstreamTimeout(
            f"The request to model {route.id!r} did not finish within its request_timeout "
            f"of {route.request_timeout:g} s (upstream {route.host}); the gateway stopped it."
        )
