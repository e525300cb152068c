"""An OpenAI-compatible gateway: routes model ids to upstreams, gives models OpenAPI tools."""

__version__ = "0.1.0"
