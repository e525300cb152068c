"""The floor: a minimal pass-through proxy on the same stack (aiohttp + uvloop + orjson)."""

import sys

import aiohttp
import orjson
import uvloop
from aiohttp import web

UPSTREAM = sys.argv[2] + "/v1/chat/completions"
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench"}


async def handle(request):
    body = orjson.loads(await request.read())
    body["model"] = "up-model"
    async with request.app["s"].post(UPSTREAM, data=orjson.dumps(body), headers=HEADERS) as r:
        if not body.get("stream"):
            return web.Response(
                body=await r.read(), status=r.status, content_type="application/json"
            )
        out = web.StreamResponse(status=r.status, headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        async for chunk in r.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


async def session(app):
    app["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["s"].close()


app = web.Application(client_max_size=64 * 1024 * 1024)
app.cleanup_ctx.append(session)
app.router.add_post("/v1/chat/completions", handle)
web.run_app(
    app,
    host="127.0.0.1",
    port=int(sys.argv[1]),
    access_log=None,
    print=None,
    loop=uvloop.new_event_loop(),
)
