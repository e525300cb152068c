"""The shipped config/gateway.yaml, end to end, with its upstream and tool server faked."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web
from conftest import start_app
from test_tool_loop import answer, calls, tool_messages

from gateway.app import create_app
from gateway.configload import load_config

ROOT = Path(__file__).resolve().parents[2]


async def test_example_weather_request(fake_upstream, oai, monkeypatch):
    seen = []

    async def forecast(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response(
            {
                "latitude": 48.86,
                "longitude": 2.35,
                "current": {"temperature_2m": 17.3, "wind_speed_10m": 9.4, "weather_code": 1},
            }
        )

    meteo = web.Application()
    meteo.router.add_get("/v1/forecast", forecast)
    runner, meteo_url = await start_app(meteo)
    up = await fake_upstream()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = load_config(ROOT / "config" / "gateway.yaml")
    models = [m.model_copy(update={"base_url": up.url + "/v1"}) for m in config.models]
    tools = [t.model_copy(update={"base_url": meteo_url}) for t in config.tools]
    config = config.model_copy(update={"models": models, "tools": tools})
    gw_runner, url = await start_app(create_app(config))
    try:
        up.push(
            calls(
                (
                    "get_weather_forecast",
                    {
                        "latitude": 48.86,
                        "longitude": 2.35,
                        "current": ["temperature_2m", "wind_speed_10m"],
                    },
                )
            ),
            answer("It is 17 °C in Paris with a light wind."),
        )

        class GW:
            v1 = url + "/v1"

        res = await oai(GW).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather in Paris?"}]
        )
        assert res.choices[0].message.content == "It is 17 °C in Paris with a light wind."
        assert seen == [
            "/v1/forecast?latitude=48.86&longitude=2.35&current=temperature_2m%2Cwind_speed_10m"
        ]
        tool_msg = tool_messages(up.received[1])[0]["content"]
        assert tool_msg.startswith("HTTP 200\n")
        assert json.loads(tool_msg.partition("\n")[2])["current"]["temperature_2m"] == 17.3
        assert up.received[0].body["temperature"] == 0.2
    finally:
        await gw_runner.cleanup()
        await runner.cleanup()


async def test_example_demo_model_answers_offline_with_no_key(oai, monkeypatch):
    """The README's first request: the shipped config's demo model, no key, no network."""
    for var in ("OPENAI_API_KEY", "GATEWAY_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    seen = []

    async def forecast(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"current": {"temperature_2m": 17.3}})

    meteo = web.Application()
    meteo.router.add_get("/v1/forecast", forecast)
    runner, meteo_url = await start_app(meteo)
    config = load_config(ROOT / "config" / "gateway.yaml")
    assert config.model("demo").base_url == "mock://"
    tools = [t.model_copy(update={"base_url": meteo_url}) for t in config.tools]
    gw_runner, url = await start_app(create_app(config.model_copy(update={"tools": tools})))
    try:

        class GW:
            v1 = url + "/v1"

        client = oai(GW)
        hello = [{"role": "user", "content": "Hello!"}]
        res = await client.chat.completions.create(model="demo", messages=hello)
        assert res.choices[0].message.content == "Hello!"
        call = '/call get_weather_forecast {"latitude": 48.86, "longitude": 2.35}'
        stream = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": call}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert seen == ["/v1/forecast?latitude=48.86&longitude=2.35"]
        assert text == (
            'get_weather_forecast returned: HTTP 200\n{"current":{"temperature_2m":17.3}}'
        )
    finally:
        await gw_runner.cleanup()
        await runner.cleanup()


async def test_example_demo_tool_call_fails_gracefully_when_the_tool_server_is_unreachable(
    oai, monkeypatch
):
    monkeypatch.delenv("GATEWAY_API_KEY", raising=False)
    config = load_config(ROOT / "config" / "gateway.yaml")
    tools = [t.model_copy(update={"base_url": "http://127.0.0.1:1"}) for t in config.tools]
    gw_runner, url = await start_app(create_app(config.model_copy(update={"tools": tools})))
    try:

        class GW:
            v1 = url + "/v1"

        call = '/call get_weather_forecast {"latitude": 48.86, "longitude": 2.35}'
        res = await oai(GW).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": call}]
        )
        text = res.choices[0].message.content
        assert text.startswith("get_weather_forecast returned: ")
        assert "could not reach" in text
    finally:
        await gw_runner.cleanup()
