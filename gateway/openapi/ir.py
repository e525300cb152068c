"""The small model of an API operation that every later stage sees.

The loader and converter resolve every spec-version quirk into these shapes once, at
start-up; executing a call only looks things up in them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator

Location = Literal["path", "query", "header", "cookie"]
BODY_ARG = "requestBody"
#: an operation's ``security``: alternatives, each the scheme names sent together;
#: ``()`` needs no credentials, and so does an empty alternative
Requirements = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class SecurityScheme:
    """One entry of ``components.securitySchemes`` (2.0: ``securityDefinitions``)."""

    name: str
    type: str  # apiKey, http, oauth2, openIdConnect, mutualTLS
    location: str | None = None  # apiKey: header, query or cookie
    param: str | None = None  # apiKey: the header, query parameter or cookie name
    http_scheme: str | None = None  # http: bearer, basic, ... (lower case)
    token_url: str | None = None  # oauth2: the clientCredentials flow's tokenUrl

    def describe(self) -> str:
        if self.type == "apiKey":
            return f"{self.name} (apiKey in {self.location} {self.param})"
        if self.type == "http":
            return f"{self.name} (http {self.http_scheme})"
        return f"{self.name} ({self.type})"


@dataclass(frozen=True)
class Param:
    name: str  # the name on the wire
    location: Location
    arg: str  # the property name in the function's arguments
    required: bool
    schema: dict[str, Any]
    style: str  # form, simple, label, matrix, spaceDelimited, pipeDelimited, deepObject
    explode: bool
    allow_reserved: bool = False
    content_type: str | None = None  # a parameter given by `content`: value serialised as JSON


@dataclass(frozen=True)
class Body:
    content_type: str
    required: bool
    schema: dict[str, Any]
    #: per-property encoding for form bodies: {"prop": {"style", "explode", "contentType"}}
    encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    arg: str = BODY_ARG


@dataclass(frozen=True)
class Operation:
    toolset: str
    method: str  # upper case
    path: str
    operation_id: str | None
    summary: str
    description: str
    tags: tuple[str, ...]
    params: tuple[Param, ...]
    body: Body | None
    server: str | None  # resolved base URL from the spec (may be None or relative)
    deprecated: bool = False
    security: Requirements = ()

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Tool:
    """One OpenAI function, and how to turn its arguments back into the operation's request."""

    name: str
    description: str
    parameters: dict[str, Any]
    operation: Operation

    @property
    def toolset(self) -> str:
        return self.operation.toolset

    @functools.cached_property
    def validator(self) -> Draft202012Validator:
        """Checks the model's arguments; built on the first call of this function."""
        return Draft202012Validator(self.parameters)

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class Skipped:
    toolset: str
    method: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"toolset {self.toolset}: skipped {self.method} {self.path}: {self.reason}"
