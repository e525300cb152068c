"""Fast fake upstream for the bench (no logging, uvloop), plus a tiny tool server.

POST /v1/chat/completions answers from pre-built bytes:
- a body with "stream": true gets 100 SSE chunks (or holds the stream open for "x_hold" s);
- a body offering the function getWeather, with no tool message yet, gets a tool call;
- anything else gets a small completion.
GET /weather is the tool server.
POST /bad/{kind}/v1/chat/completions misbehaves (the robustness scenario): ``huge`` sends a
1 GiB body, ``bomb`` a gzip body that inflates to 1 GiB, ``endless`` an SSE stream that never
ends, ``endless-line`` one SSE data line that never ends.
"""

import asyncio
import gzip
import sys

import orjson
import uvloop
from aiohttp import web


def _chunk(delta, finish=None):
    return (
        b"data: "
        + orjson.dumps(
            {
                "id": "chatcmpl-b",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "up-model",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )
        + b"\n\n"
    )


COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-b",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
)
TOOL_CALL = orjson.dumps(
    {
        "id": "chatcmpl-t",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "getWeather", "arguments": '{"location":"Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
)
STREAM = (
    [_chunk({"role": "assistant", "content": ""})]
    + [_chunk({"content": f"tok{i} "}) for i in range(98)]
    + [_chunk({}, "stop"), b"data: [DONE]\n\n"]
)
WEATHER = orjson.dumps({"location": "Paris", "temp_c": 21})


async def chat(request):
    body = await request.read()
    if b'"stream":true' in body or b'"stream": true' in body:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        hold = orjson.loads(body).get("x_hold") if b"x_hold" in body else None
        if hold:
            await resp.write(STREAM[0])
            await asyncio.sleep(hold)
            await resp.write(STREAM[-2] + STREAM[-1])
        else:
            await resp.write(b"".join(STREAM[:1]))
            for part in STREAM[1:]:
                await resp.write(part)
        await resp.write_eof()
        return resp
    if b"getWeather" in body and b'"role":"tool"' not in body:
        return web.Response(body=TOOL_CALL, content_type="application/json")
    return web.Response(body=COMPLETION, content_type="application/json")


async def weather(request):
    return web.Response(body=WEATHER, content_type="application/json")


MIB = b"a" * (1 << 20)
_bomb: list[bytes] = []


def gzip_bomb() -> bytes:
    """1 GiB of 'a' as 64 gzip members of 16 MiB each (about 1 MB in all), built once."""
    if not _bomb:
        _bomb.append(gzip.compress(MIB * 16, 9) * 64)
    return _bomb[0]


async def bad(request):
    kind = request.match_info["kind"]
    await request.read()
    if kind == "bomb":
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=gzip_bomb(), headers=headers)
    sse = kind.startswith("endless")
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream" if sse else "application/json"}
    )
    await resp.prepare(request)
    if kind == "huge":
        for _ in range(1024):
            await resp.write(MIB)
        await resp.write_eof()
        return resp
    if kind == "endless-line":
        await resp.write(b"data: ")
    while True:  # until the gateway goes away
        await resp.write(MIB[:65536] if kind == "endless-line" else STREAM[1])
        await asyncio.sleep(0)


app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/bad/{kind}/v1/chat/completions", bad)
app.router.add_post("/v1/chat/completions", chat)
app.router.add_get("/weather", weather)
if __name__ == "__main__":
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
