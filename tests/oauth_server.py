"""An OAuth2 token endpoint built on Authlib's server side, served by aiohttp on loopback.

Authlib's ``AuthorizationServer`` with its ``ClientCredentialsGrant`` does the protocol
(client authentication with ``client_secret_basic``, scope checks, the token response);
this file only adapts it to aiohttp and remembers the tokens it issued.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = ("read", "write")

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


@dataclass
class TokenServer(AuthorizationServer):  # type: ignore[misc]
    """Issues tokens to its clients; ``issued`` keeps each token with its scope."""

    clients: dict[str, Client]
    expires_in: int = 3600
    issued: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    fail_with: int | None = None  # answer every request with this status (as a broken IdP)

    def __post_init__(self) -> None:
        super().__init__(scopes_supported=["read", "write"])
        self.register_grant(ClientCredentialsGrant)
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: "tok-" + secrets.token_urlsafe(12),
                expires_generator=lambda client, grant_type: self.expires_in,
            ),
        )

    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        self.issued.append(token)

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError

    def handle_response(self, status: int, body: Any, headers: Any) -> web.Response:
        return web.Response(body=json.dumps(body), status=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def valid(self, token: str) -> bool:
        return any(t["access_token"] == token for t in self.issued)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.fail_with is not None:
            return web.json_response({"error": "temporarily_unavailable"}, status=self.fail_with)
        form = await request.post()
        oauth = OAuth2Request(request.method, str(request.url), headers=request.headers)
        oauth.payload = BasicOAuth2Payload({k: str(v) for k, v in form.items()})
        return self.create_token_response(oauth)  # type: ignore[no-any-return]


def token_app(server: TokenServer) -> web.Application:
    app = web.Application()
    app.router.add_post("/oauth/token", server.handle)
    return app
