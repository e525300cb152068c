"""The ``gateway`` command: ``serve``, ``check``, ``tools``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from gateway import __version__, logs
from gateway.config import GatewayConfig
from gateway.configload import config_path, load_config
from gateway.errors import CannotServe, ConfigError
from gateway.lifecycle import EarlyHangup, Options, bind, serve
from gateway.openapi.load import fetch_with
from gateway.reload import build_snapshot
from gateway.selection import Selector
from gateway.tools import EMPTY, ToolSet, listing, load_tools, offered_listing
from gateway.upstream import new_session
from gateway.urls import MOCK_URL
from gateway.workers import supervise

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup("text", args.log_level or "info")  # until the config says more
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, so that a closed pipe is caught below
        return code
    except (ConfigError, CannotServe) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # ``gateway check | head``: the reader has what it wanted; everything was loaded and
        # checked before the first line was printed, so this is no failure of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description=__doc__)
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    _log_level_arg(p, None)
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the server")
    _config_arg(serve)
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port the parent binds; default 1",
    )
    serve.add_argument(
        "--watch",
        action="store_true",
        help="reload when the config file or a local spec file changes (as on SIGHUP)",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate the config and the tool specs")
    _config_arg(check)
    check.set_defaults(func=cmd_check)

    tools = sub.add_parser("tools", help="print the functions offered, as JSON")
    _config_arg(tools)
    which = tools.add_mutually_exclusive_group()
    which.add_argument("--model", help="only the functions offered to this model id")
    which.add_argument("--toolset", help="only this toolset's functions")
    tools.add_argument(
        "--query",
        help="with --model: what tool_selection would offer for this user message",
    )
    tools.set_defaults(func=cmd_tools)
    return p


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (default: $GATEWAY_CONFIG or config/gateway.yaml)")
    _log_level_arg(p, argparse.SUPPRESS)  # accepted after the subcommand too


def _log_level_arg(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help="overrides logging.level (default: info)",
    )


def setup_logging(config: GatewayConfig, level: str | None, *, worker: bool = False) -> None:
    """The config's log format and level; ``--log-level`` wins over ``logging.level``."""
    logs.setup(config.logging.format, level or config.logging.level, worker=worker)


# --- serve -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    early = EarlyHangup()  # a SIGHUP before serving is a reload once serving
    path = config_path(args.config)
    config = load_config(path)
    setup_logging(config, args.log_level)
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    log.info("config %s: %d model(s), %d toolset(s)", path, len(config.models), len(config.tools))
    for warning in config.warnings():
        log.warning("%s", warning)
    if args.workers > 1:
        return supervise(bind(host, port), path, config, args.workers, args.log_level, args.watch)
    run(config, host, port, Options(path, watch=args.watch, early=early))
    return 0


def run(config: GatewayConfig, host: str, port: int, options: Options) -> None:
    """Serve in this process until SIGTERM or SIGINT, then drain."""
    sock = bind(host, port)
    serve(sock, build_snapshot(config), options)


# --- check and tools ---------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Load everything first (config, then every spec), and print only once all is known."""
    path = config_path(args.config)
    config = load_config(path)
    setup_logging(config, args.log_level)
    logging.getLogger("gateway.tools").setLevel(logging.ERROR)  # printed below, once
    tools = load_tools_sync(config)
    print(f"{path}: OK")
    print(
        f"server: http://{config.server.host}:{config.server.port} "
        f"(client keys: {'required' if config.server.api_keys else 'not required'})"
    )
    for m in config.models:
        extras = []
        if m.fallbacks:
            extras.append(f"fallbacks: {', '.join(m.fallbacks)}")
        if m.tools:
            extras.append(f"tools: {', '.join(m.tools)}")
        tail = f" [{'; '.join(extras)}]" if extras else ""
        where = f"{m.base_url} (the built-in mock)" if m.base_url == MOCK_URL else m.base_url
        print(f"model {m.id} -> {where} as {m.upstream_model or m.id}{tail}")
    _print_tools(tools)
    for warning in config.warnings() + tools.warnings():
        print(f"WARNING: {warning}")
    return 0


def _print_tools(tools: ToolSet) -> None:
    for r in tools.reports:
        print(
            f"toolset {r.name} ({r.spec}, {_version_name(r.version)}): {r.converted} "
            f"operation(s) converted, {len(r.skipped)} skipped"
            + (f", {r.cuts} recursive schema(s) cut" if r.cuts else "")
        )
    for model_id, offered in tools.by_model.items():
        selector = tools.selectors.get(model_id)
        how = ""
        if selector is not None:
            sel = selector.config
            how = f" (tool_selection: {sel.max_functions} per round by {sel.method}" + (
                ", with find_tools)" if sel.search else ")"
            )
        print(f"model {model_id} is offered {len(offered)} function(s){how}")
    for rename in tools.renames:
        print(f"renamed: {rename}")


def _version_name(version: str) -> str:
    return "Swagger 2.0" if version == "2.0" else f"OpenAPI {version}"


def load_tools_sync(config: GatewayConfig) -> ToolSet:
    """Load and convert every toolset, fetching URL specs with the gateway's own client."""
    if not config.tools:
        return EMPTY

    async def go() -> ToolSet:
        session = new_session()
        try:
            return await load_tools(config, fetch_with(session))
        finally:
            await session.close()

    return asyncio.run(go())


async def selected(config: GatewayConfig, selector: Selector, query: str) -> list[dict]:
    """What ``selector`` offers for one user message (embeddings fetched as when serving)."""
    from gateway.loop_handler import embedder
    from gateway.routing import Router
    from gateway.upstream import Upstream

    session = new_session()
    try:
        embed = None
        if selector.embeddings is not None and selector.config.embedding_model:
            router = Router(config)
            chain = router.chain(router.resolve(selector.config.embedding_model))
            embed = embedder(Upstream(session), chain, "")
            await selector.warm(embed)  # as at start-up: every function embedded first
        offering = await selector.offering([{"role": "user", "content": query}], embed)
    finally:
        await session.close()
    return offered_listing(selector, offering)


def cmd_tools(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config))
    if args.model is not None and config.model(args.model) is None:
        raise ConfigError("gateway tools", [f"--model: unknown model id {args.model!r}"])
    if args.toolset is not None and args.toolset not in {t.name for t in config.tools}:
        raise ConfigError("gateway tools", [f"--toolset: unknown toolset {args.toolset!r}"])
    if args.query is not None and args.model is None:
        raise ConfigError("gateway tools", ["--query needs --model"])
    logging.getLogger("gateway.tools").setLevel(logging.ERROR)  # warnings belong to `check`
    tools = load_tools_sync(config)
    if args.query is not None and args.model in tools.selectors:
        items = asyncio.run(selected(config, tools.selectors[args.model], args.query))
    else:
        items = listing(tools, model=args.model, name=args.toolset)
    sys.stdout.write(json.dumps(items, indent=2, ensure_ascii=False) + "\n")
    return 0
