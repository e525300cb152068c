"""The one redaction helper: every form of every secret, before a cut, never half a secret."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import pytest

from gateway.configload import build_config
from gateway.redact import MARK, Redactor, config_secrets, for_config

SECRET = "s3cr3t/k+y=&x é"


@pytest.mark.parametrize(
    "form",
    [
        SECRET,
        quote(SECRET, safe=""),
        quote(SECRET),
        quote_plus(SECRET),
        quote(SECRET, safe="").lower(),  # lower-case hex digits, as some servers write them
        json.dumps(SECRET)[1:-1],  # \u00e9
        orjson.dumps(SECRET).decode()[1:-1],
        json.dumps(SECRET)[1:-1].replace("/", "\\/"),  # PHP's escaped slash
        json.dumps(SECRET)[1:-1].replace("&", "\\u0026"),  # Go's escaped &
        base64.b64encode(SECRET.encode()).decode(),
        base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
        "s3cr3t/k+y=&amp;x é",  # an HTML page
    ],
)
def test_percent_encoded_query_credential_is_redacted(form):
    """Every form a secret takes on the wire is caught, not only the raw one."""
    text = f"before {form} after"
    assert Redactor([SECRET]).redact(text) == f"before {MARK} after"


@pytest.mark.parametrize(
    "form",
    [
        "a!b~c%2Fd%20%C3%A9(1)",  # JavaScript's encodeURIComponent
        "a%21b%7Ec%2Fd+%C3%A9%281%29",  # PHP's urlencode, Java's URLEncoder
        "a!b~c/d%20%c3%A9(1)",  # a server that re-encodes only what it must, mixed case
        "a!b~c\\/d \\u00e9(1)",  # JSON with escaped slash and ASCII escapes
    ],
)
def test_other_languages_percent_encodings_are_redacted(form):
    """Tool servers re-encode in their own language's way; any mix of escapes matches."""
    assert Redactor(["a!b~c/d é(1)"]).redact(f"<{form}>") == f"<{MARK}>"


def test_basic_auth_token_is_redacted_as_the_base64_of_the_pair():
    token = base64.b64encode(b"alice:pa55word").decode()
    redactor = Redactor(["pa55word", "alice:pa55word"])
    assert redactor.redact(f"Authorization: Basic {token}") == f"Authorization: Basic {MARK}"


def test_longest_form_is_replaced_whole():
    redactor = Redactor(["abcd", "abcdefgh"])
    assert redactor.redact("xabcdefghx abcdx") == f"x{MARK}x {MARK}x"


def test_secrets_shorter_than_four_characters_are_not_redacted():
    assert Redactor(["abc"]).redact("abc abcd") == "abc abcd"
    assert not Redactor(["", "abc"])


def test_extra_secrets_known_only_at_call_time_are_redacted():
    redactor = Redactor(["configured"])
    text = "configured fetched-token " + quote("fetched token")
    assert redactor.redact(text, extra=["fetched-token", "fetched token"]) == " ".join([MARK] * 3)


def test_secret_straddling_the_cut_leaves_no_prefix():
    """A body read up to a cap ends mid-secret: the half that was read is dropped."""
    redactor = Redactor(["Bearer TOOLBEARERSECRET-f6g"])
    cut_off = 'HTTP 200 {"auth": "Bearer TOOLBEARERSECRET-f6'
    assert redactor.drop_partial(cut_off) == 'HTTP 200 {"auth": "'
    encoded = "q=" + quote("Bearer TOOLBEARERSECRET-f6g", safe="")[:20]
    assert redactor.drop_partial(encoded) == "q="
    assert redactor.drop_partial("nothing secret here") == "nothing secret here"


def test_mixed_escapes_straddling_the_cut_leave_no_prefix():
    """JSON's ``\\/`` and Go's ``\\u0026`` in one echo, cut inside: nothing of it is kept."""
    redactor = Redactor(["QKEY/sec ret+1&x"])
    echoed = "QKEY\\/sec ret+1\\u0026x"
    for n in range(1, len(echoed)):
        assert redactor.drop_partial("p" * 10 + echoed[:n]) == "p" * 10, echoed[:n]
    assert redactor.cut("p" * 10 + "QKEY%2Fsec%20ret%2B1%26x", 19) == "p" * 10
    assert redactor.cut("p" * 10 + "&#81;KEY&#47;sec", 20) == "p" * 10
    assert redactor.drop_partial("ppp QUICK") == "ppp QUICK"  # a first letter alone is not enough


def test_cut_never_splits_a_secret_or_the_mark():
    redactor = Redactor(["0123456789abcdef"])
    text = redactor.redact("x" * 10 + "0123456789abcdef" + "y" * 10)
    assert text == "x" * 10 + MARK + "y" * 10
    assert redactor.cut(text, 14) == "x" * 10  # "[red" would be a broken mark
    assert redactor.cut(text, 25) == "x" * 10 + MARK + "yyyyy"
    assert redactor.cut("é" * 10, 5) == "éé"  # bytes, never half a character


def test_azure_style_api_key_header_is_redacted():
    """A key in a model's headers (Azure's api-key) is a secret like api_key is."""
    config = build_config(
        {
            "server": {"api_keys": ["client-key-1"]},
            "models": [
                {
                    "id": "azure",
                    "base_url": "https://r.openai.azure.com/openai/v1",
                    "headers": {"api-key": "azure-key-123", "X-Team": "blue-team"},
                },
                {
                    "id": "other",
                    "base_url": "http://x/v1",
                    "api_key": "sk-model",
                    "headers": {"Authorization": "Token tok-456", "X-Auth-Token": "hdr-789"},
                },
            ],
            "tools": [
                {
                    "name": "t",
                    "spec": "s.json",
                    "auth": {"type": "basic", "username": "bob", "password": "pw-000"},
                    "headers": {"X-Api-Key": "tool-hdr-1"},
                }
            ],
        },
        "cfg",
        Path("."),
    )
    secrets = set(config_secrets(config))
    assert {"azure-key-123", "sk-model", "Token tok-456", "tok-456", "hdr-789"} <= secrets
    assert {"pw-000", "bob:pw-000", "tool-hdr-1", "client-key-1"} <= secrets
    assert "blue-team" not in secrets  # not a credential header
    assert for_config(config).redact('{"api-key":"azure-key-123"}') == f'{{"api-key":"{MARK}"}}'


def test_many_secrets_one_pass_is_consistent_with_each_alone():
    secrets = [f"secret-number-{i:03d}" for i in range(50)]
    both = Redactor(secrets)
    text = " ".join(quote_plus(s) if i % 2 else s for i, s in enumerate(secrets))
    assert both.redact(text) == " ".join([MARK] * 50)


def test_a_token_fetched_for_one_call_is_redacted_without_recompiling_the_config():
    config = Redactor([f"configured-secret-{i}" for i in range(10)])
    per_call = config.including(["fetched-token-1"])
    assert per_call._patterns[0] is config._patterns[0]  # the config's pattern, reused
    text = "configured-secret-3 " + quote_plus("fetched token-1".replace(" ", "-"))
    assert per_call.redact(text) == f"{MARK} {MARK}"
    assert config.redact(text) == f"{MARK} fetched-token-1"  # the config's is unchanged
    assert per_call.drop_partial("x fetched-tok") == "x "
    assert config.including([]) is config and config.including(["abc"]) is config
