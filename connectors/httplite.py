"""A small HTTP/1.1 client for miners' LAN web APIs on the hot path (VNish's reads).

httpx costs about 1-2 ms of CPU per request on these machines; a sweep of 10,000 miners
whose telemetry needs one web call each cannot afford it.  This client does one request per
connection (the miners' servers close anyway): write, read to EOF within a deadline and a
size bound, parse the status line, the headers and a Content-Length or chunked body.
HTTP digest authentication (RFC 7616, MD5, qop=auth: Antminer stock's web UI) is answered
here too: a 401 with a Digest challenge is retried once with the credentials, and the
server's nonce is kept for the next requests to that server (with a growing nonce count, as
the RFC allows), so a grid dip's commands cost one request each, not two.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from connectors.wire import exchange

MAX_BYTES = 1 << 20


class HttpError(OSError):
    """A reply that is not HTTP, too large, or cut short."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


async def request(host: str, port: int, method: str, path: str, *,
                  headers: dict[str, str] | None = None, body: bytes = b"",
                  timeout_s: float = 3.0, max_bytes: int = MAX_BYTES,
                  digest: tuple[str, str] | None = None) -> Reply:
    """One request (two with a digest challenge); OSError/TimeoutError for the transport,
    HttpError for a bad reply."""
    hdrs = dict(headers or {})
    kept = _NONCES.get((host, port)) if digest is not None else None
    if kept is not None and digest is not None:  # answer the last challenge again
        _NONCES[(host, port)] = (kept[0], kept[1] + 1)
        hdrs["Authorization"] = digest_header(kept[0], method, path, *digest, nc=kept[1] + 1)
    reply = await _once(host, port, method, path, hdrs, body, timeout_s, max_bytes)
    challenge = reply.headers.get("www-authenticate", "")
    if reply.status == 401 and digest is not None and challenge.lower().startswith("digest"):
        _NONCES[(host, port)] = (challenge, 1)
        hdrs["Authorization"] = digest_header(challenge, method, path, *digest)
        reply = await _once(host, port, method, path, hdrs, body, timeout_s, max_bytes)
        if reply.status == 401:
            _NONCES.pop((host, port), None)
    return reply


#: (host, port) -> the last digest challenge and the nonce count used with it
_NONCES: dict[tuple[str, int], tuple[str, int]] = {}


def digest_header(challenge: str, method: str, uri: str, user: str, password: str,
                  cnonce: str = "", nc: int = 1) -> str:
    """The ``Authorization`` answer to a ``WWW-Authenticate: Digest ...`` challenge."""
    f = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge[len("Digest"):]))
    realm, nonce = f.get("realm", ""), f.get("nonce", "")

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()  # the protocol's hash

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    out = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "auth" in f.get("qop", "").split(","):
        count, cnonce = f"{nc:08x}", cnonce or secrets.token_hex(8)
        resp = md5(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
        out += f', qop=auth, nc={count}, cnonce="{cnonce}"'
    else:
        resp = md5(f"{ha1}:{nonce}:{ha2}")
    out += f', response="{resp}", algorithm=MD5'
    if "opaque" in f:
        out += f', opaque="{f["opaque"]}"'
    return out


async def _once(host: str, port: int, method: str, path: str, headers: dict[str, str],
                body: bytes, timeout_s: float, max_bytes: int) -> Reply:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             "Accept: application/json", f"Content-Length: {len(body)}"]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    data = await exchange(host, port, payload, timeout_s, max_bytes, too_big=HttpError)
    return parse(data)


def parse(data: bytes) -> Reply:
    """A complete HTTP/1.x response (HttpError when it is not one)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise HttpError("no HTTP header in the reply")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP status line: {lines[0][:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (ln.partition(":") for ln in lines[1:] if ln)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _unchunk(rest)
    elif (n := headers.get("content-length", "")).isdigit():
        if len(rest) < int(n):
            raise HttpError(f"body cut short: {len(rest)} of {n} bytes")
        rest = rest[:int(n)]
    return Reply(int(parts[1]), headers, rest)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            raise HttpError("chunked body cut short")
        try:
            size = int(size_line.split(b";")[0].strip() or b"x", 16)
        except ValueError:
            raise HttpError(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            return out
        if len(data) < size + 2:
            raise HttpError("chunked body cut short")
        out, data = out + data[:size], data[size + 2:]
