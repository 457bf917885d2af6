#!/usr/bin/env python3
"""Drives examples/echo.rs with the Python `websockets` library, a client nobody here wrote.

    python test_echo.py 127.0.0.1:PORT        (or ADDR=127.0.0.1:PORT python test_echo.py)

The echo server echoes every text and binary message unchanged on any path, serves an HTML
page at `GET /` and answers 404 on other plain HTTP paths. Every check below runs on its own
connection with a 10 s bound. Prints one line per check and, last, `python-client: N passed,
M failed`; exits 1 when any check fails.
"""
import asyncio
import base64
import http.client
import os
import sys
import time
import traceback

import websockets
from websockets.asyncio.client import connect

TIMEOUT = 10.0
ADDR = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ADDR", "127.0.0.1:3000")
HOST, PORT = ADDR.rsplit(":", 1)
PORT = int(PORT)
WS_URL = "ws://%s:%d" % (HOST, PORT)
# The server was started with WS_DEFLATE=1: permessage-deflate must be agreed and work.
DEFLATE = os.environ.get("WS_DEFLATE") == "1"

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def deflate_check(fn):
    """A check that runs only against a server with permessage-deflate on."""
    if DEFLATE:
        CHECKS.append(fn)
    return fn


def ws(path="/", **kwargs):
    # proxy=None: never route loopback traffic through a proxy from the environment.
    # The client offers permessage-deflate by default, as a real one would.
    kwargs.setdefault("max_size", 4 * 2**20)
    return connect(WS_URL + path, open_timeout=TIMEOUT, close_timeout=TIMEOUT,
                   ping_interval=None, proxy=None, **kwargs)


async def roundtrip(conn, message):
    await conn.send(message)
    got = await conn.recv()
    assert type(got) is type(message), "sent %s, got %s back" % (type(message).__name__, type(got).__name__)
    assert got == message, "echo differs: sent %d, got %d %s" % (
        len(message), len(got), "bytes" if isinstance(got, bytes) else "chars")


@check
async def text_roundtrip_including_non_ascii():
    async with ws() as conn:
        for message in ["hello", "héllo wörld ✓ — 日本語 😀", "\u0000nul and \U0010ffff max"]:
            await roundtrip(conn, message)


@check
async def binary_roundtrip():
    async with ws() as conn:
        await roundtrip(conn, bytes(range(256)))
        await roundtrip(conn, b"\xff\xfe not utf-8 \x80")


@check
async def empty_text_echoed_as_empty_text():
    async with ws() as conn:
        await roundtrip(conn, "")


@check
async def empty_binary_echoed_as_empty_binary():
    async with ws() as conn:
        await roundtrip(conn, b"")


@check
async def one_mib_binary_message():
    async with ws() as conn:
        await roundtrip(conn, os.urandom(2**20))


@check
async def hundred_messages_in_order():
    async with ws() as conn:
        sent = [("msg %d" % i) if i % 2 else ("bin %d" % i).encode() for i in range(100)]
        for m in sent:
            await conn.send(m)
        got = [await conn.recv() for _ in sent]
        assert got == sent, "first difference at %d" % next(i for i, (a, b) in enumerate(zip(sent, got)) if a != b)


@check
async def ping_gets_pong():
    async with ws() as conn:
        pong = await conn.ping(b"are you there")
        latency = await pong
        assert latency >= 0
        await roundtrip(conn, "still echoing after ping")


@check
async def client_close_1000_gets_1000_back():
    async with ws() as conn:
        await roundtrip(conn, "before close")
        await conn.close(1000, "bye")
        rcvd = conn.protocol.close_rcvd
        assert rcvd is not None, "no close frame came back (close_code %s)" % conn.close_code
        assert rcvd.code == 1000, "close code %s came back" % rcvd.code
        assert conn.close_code == 1000, "close_code is %s" % conn.close_code


@check
async def echo_on_any_path():
    for path in ["/ws", "/any/deeper/path?query=1"]:
        async with ws(path) as conn:
            await roundtrip(conn, "path " + path)


def no_deflate_check(fn):
    """A check that runs only against a server without compression."""
    if not DEFLATE:
        CHECKS.append(fn)
    return fn


@no_deflate_check
async def no_extension_negotiated():
    # The client offers permessage-deflate; the server must not accept it unless told to.
    async with ws() as conn:
        accepted = conn.response.headers.get("Sec-WebSocket-Extensions")
        assert accepted is None, "server accepted extensions: %r" % accepted
        await roundtrip(conn, "uncompressed")


def agreed(conn):
    return conn.response.headers.get("Sec-WebSocket-Extensions") or ""


@deflate_check
async def deflate_agreed_with_context_takeover_both_ways():
    # websockets offers permessage-deflate with client_max_window_bits and keeps its context
    # both ways unless told otherwise: the server must agree without imposing takeover limits.
    async with ws() as conn:
        answer = agreed(conn)
        assert answer.startswith("permessage-deflate"), "not agreed: %r" % answer
        assert "no_context_takeover" not in answer, answer
        await roundtrip(conn, "compressed " * 50)


@deflate_check
async def deflate_large_messages():
    async with ws() as conn:
        await roundtrip(conn, "large and compressible text " * 30000)      # ~840 KiB
        await roundtrip(conn, bytes(range(256)) * 4096)                      # 1 MiB binary
        await roundtrip(conn, os.urandom(200000))                            # incompressible


@deflate_check
async def deflate_utf8_and_repeated_messages():
    async with ws() as conn:
        for i in range(200):
            # Similar messages: each refers back to the ones before it (context takeover).
            await roundtrip(conn, "κόσμε 🌍 message number %d, much like the others" % i)


@deflate_check
async def deflate_fragmented_messages():
    async with ws() as conn:
        parts = ["fragment %d ✓ " % i * 20 for i in range(10)]
        await conn.send(iter(parts))           # one message in ten frames
        got = await asyncio.wait_for(conn.recv(), TIMEOUT)
        assert got == "".join(parts), "fragmented echo differs"
        await roundtrip(conn, "after the fragments")


@deflate_check
async def deflate_small_messages_stay_uncompressed_and_pings_work():
    async with ws() as conn:
        await roundtrip(conn, "tiny")
        await roundtrip(conn, b"")
        pong = await conn.ping(b"compressed or not")
        await asyncio.wait_for(pong, TIMEOUT)


def http_get(path, headers=None):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def header(headers, name):
    values = [v for k, v in headers if k.lower() == name.lower()]
    return values[0] if values else None


@check
async def version_8_handshake_gets_426():
    key = base64.b64encode(os.urandom(16)).decode()
    status, headers, body = await asyncio.to_thread(http_get, "/ws", {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "8",
    })
    assert status == 426, "status %d (body %r)" % (status, body[:200])
    version = header(headers, "Sec-WebSocket-Version")
    assert version is not None and "13" in [v.strip() for v in version.split(",")], \
        "Sec-WebSocket-Version header is %r" % version


@check
async def plain_get_root_serves_html():
    status, headers, body = await asyncio.to_thread(http_get, "/")
    assert status == 200, "status %d" % status
    ctype = header(headers, "Content-Type") or ""
    text = body.decode("utf-8", "replace").lower()
    assert "text/html" in ctype or "<html" in text, "content-type %r, body %r" % (ctype, body[:200])
    assert "<html" in text or "<!doctype html" in text, "body is not HTML: %r" % body[:200]


@check
async def plain_get_other_path_is_404():
    status, _, _ = await asyncio.to_thread(http_get, "/no-such-page")
    assert status == 404, "status %d" % status


async def main():
    print("python-client: websockets %s against %s%s" % (
        websockets.__version__, WS_URL, " (permessage-deflate)" if DEFLATE else ""))
    passed = failed = 0
    for fn in CHECKS:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(fn(), TIMEOUT)
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            failed += 1
            kind = "timed out after %.0f s" % TIMEOUT if isinstance(e, asyncio.TimeoutError) else \
                "%s: %s" % (type(e).__name__, e)
            print("FAIL %s (%.2f s): %s" % (fn.__name__, time.monotonic() - t0, kind))
            if os.environ.get("PY_CLIENT_VERBOSE"):
                traceback.print_exc()
        else:
            passed += 1
            print("ok   %s (%.2f s)" % (fn.__name__, time.monotonic() - t0))
    print("python-client: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
