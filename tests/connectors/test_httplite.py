"""connectors/httplite.py: the small HTTP/1.1 client of the miners' web APIs."""

from __future__ import annotations

import asyncio

import pytest

from connectors.httplite import HttpError, digest_header, parse, request
from sim.http1 import Answer, Request, serve_http


def test_replies_are_parsed_with_length_chunks_or_refused() -> None:
    r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}junk")
    assert (r.status, r.headers["x-a"], r.body) == (200, "b", b"{}")
    r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3;x\r\n\":1\r\n"
              b"1\r\n}\r\n0\r\n\r\n")
    assert r.body == b'{"a":1}'
    for bad in (b"<html>oops</html>", b"SSH-2.0-OpenSSH\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        with pytest.raises(HttpError):
            parse(bad)


async def test_digest_challenge_is_answered_and_a_big_reply_refused() -> None:
    seen: list[str] = []

    def route(req: Request) -> Answer:
        auth = req.headers.get("authorization", "")
        seen.append(auth)
        if not auth:
            return Answer(401, {}, (("WWW-Authenticate",
                                     'Digest realm="antMiner Configuration", nonce="n1", '
                                     'qop="auth"'),))
        if req.path == "/big":
            return Answer(200, "x" * 5000)
        return Answer(200, {"ok": True, "body": req.body.decode()})

    server = await serve_http(route, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await request("127.0.0.1", port, "POST", "/cgi-bin/x.cgi", body=b'{"a":1}',
                          digest=("root", "root"))
        assert r.status == 200 and b'"body": "{\\"a\\":1}"' in r.body
        assert seen[0] == "" and seen[1].startswith('Digest username="root"')
        assert 'qop=auth' in seen[1] and 'uri="/cgi-bin/x.cgi"' in seen[1]
        with pytest.raises(HttpError, match="over"):
            await request("127.0.0.1", port, "GET", "/big", digest=("root", "root"),
                          max_bytes=1000)
        with pytest.raises((TimeoutError, asyncio.TimeoutError, OSError)):
            await request("127.0.0.1", 9, "GET", "/", timeout_s=0.5)
    finally:
        server.close()


def test_the_digest_answer_follows_rfc_7616() -> None:
    # RFC 2617 section 3.5's example (MD5, qop=auth), response computed with its cnonce
    h = digest_header('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                      'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                      'opaque="5ccc069c403ebaf9f0171e9517f40e41"',
                      "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b")
    assert 'username="Mufasa"' in h and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in h
    assert 'response="6629fae49393a05397450978507c4ef1"' in h and "nc=00000001" in h
