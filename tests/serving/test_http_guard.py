"""The HTTP guard's building blocks (issue #24): strict digits, counted JSON, bounded streamed bodies, the
open-path rule and the redaction of Authorization lines from aiohttp's parse errors."""

from __future__ import annotations

import asyncio

import pytest

from resnest_serving.serving.doors.http_guard import (
    ascii_int,
    load_json,
    open_path_refusal,
    read_bounded,
    redact_authorization,
)
from resnest_serving.serving.doors.statuses import http_status
from resnest_serving.serving.errors import ServingError

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.mark.parametrize("text,signed,expected", [
    ("12", False, 12), (" 7 ", False, 7), ("-5", True, -5), ("-5", False, None), ("²", False, None),
    ("١٢", False, None), ("9" * 5000, False, None), ("9" * 20, False, 10**20 - 1), ("9" * 21, False, None),
    ("", False, None), ("+1", False, None), ("-", True, None), ("1_000", False, None)])
def test_ascii_int(text, signed, expected):
    assert ascii_int(text, signed=signed) == expected


def test_load_json_counts_before_parsing():
    assert load_json(b'{"key": ["a", "b"]}', 10) == {"key": ["a", "b"]}
    with pytest.raises(ValueError, match="more than 100000 arrays and objects"):
        load_json(b"[" + b"[]," * 100_000 + b"[]]", 10**9)
    with pytest.raises(ValueError, match="more than 10 elements"):
        load_json(b"[" + b"1," * 10 + b"1]", 10)


@pytest.mark.parametrize("method,body,status", [("GET", False, None), ("HEAD", False, None), ("GET", True, 413),
                                                ("POST", False, 405), ("POST", True, 405), ("OPTIONS", False, 405)])
def test_open_path_rule(method, body, status):
    refusal = open_path_refusal(method, "/health/live", body)
    assert (http_status(refusal.kind) if refusal else None) == status


def test_read_bounded_stops_at_the_limit():
    taken = []

    async def chunks():
        for i in range(1000):
            taken.append(i)
            yield b"x" * 1000

    with pytest.raises(ServingError) as info:
        asyncio.run(read_bounded(chunks(), 10_500))
    assert http_status(info.value.kind) == 413 and len(taken) == 11
    assert asyncio.run(read_bounded(chunks(), 10**6)) == b"x" * 10**6


@pytest.mark.parametrize("message", [
    # the C parser quotes the whole line, the pure-Python parser the value alone
    f"Invalid header value char:\n\n  b'Authorization: Bearer {TOKEN}\\x01'\n      ^",
    f"Invalid HTTP header: b'Bearer {TOKEN}\\x01'",
    f"400, message: bad line AUTHORIZATION: {TOKEN}"])
def test_redact_authorization(message):
    redacted = redact_authorization(message)
    assert TOKEN not in redacted and "redacted" in redacted
