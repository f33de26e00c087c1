"""A small client of an OpenAI-compatible chat endpoint (``POST <base>/chat/completions``) that does not trust it.

- The API key goes to the endpoint's origin (scheme, host, port) only. A redirect to another origin is refused,
  not followed without the key: a chat endpoint has no reason to send a POST elsewhere, and the user should
  pass the address they trust. A 301/302/303 redirect is refused too (clients answer it by turning the POST
  into a GET); a 307/308 redirect within the origin is followed with the same method and body.
- ``timeout`` bounds the whole request (connect, TLS handshake, send, status line, headers, body) by one
  monotonic deadline, not each socket read, so a server trickling bytes cannot hold the client longer.
- Transient failures (connection errors, an incomplete body, HTTP 408/425/429/5xx, an answer with no text, an
  answer the caller's ``parse`` rejects) are retried with exponential backoff capped at ``max_backoff`` (a
  ``Retry-After`` up to that cap is honoured); then ``EndpointError`` naming the endpoint and the last failure.
- The key is scrubbed from the answer and from everything this module logs or raises: servers echo it in
  error text.
- The endpoint is reached directly (HTTP proxy variables are not used) and answers are capped at 8 MiB.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ANSWER_BYTES = 8 << 20
MAX_REDIRECTS = 3
_RETRY_STATUS = frozenset({408, 425, 429})  # and every 5xx
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EndpointError(RuntimeError):
    """The endpoint gave no usable answer; the message names the endpoint and never holds the API key."""


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's ``Retry-After`` in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Reply:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes


class ChatClient:
    """Client of ``<url>/chat/completions`` (``url`` may also name that path itself)."""

    def __init__(self, url: str, model: str, api_key: str | None = None, *, retries: int = 4,
                 backoff: float = 1.0, max_backoff: float = 30.0, timeout: float = 60.0, temperature: float = 0.7):
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"the endpoint URL must be http://HOST[:PORT]/... or https://..., got {url!r}")
        if api_key is not None and (not api_key.isprintable() or any(c.isspace() for c in api_key)):
            raise ValueError("the API key holds white space or control characters")
        if retries < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0:
            raise ValueError("retries, backoff and max_backoff must be >= 0 and timeout > 0")
        self.model, self._api_key = model, api_key or None
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.timeout, self.temperature = timeout, temperature
        self._origin = _origin(self.url)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, model={self.model!r})"

    def chat(self, messages: list[dict], parse: Callable[[str], T]) -> T:
        """Send ``messages``; return ``parse(answer text)``, retrying transient failures and answers that
        ``parse`` rejects with ``ValueError``. Raises ``EndpointError`` when the endpoint refuses or every
        attempt failed."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature}).encode()
        last_error, retry_after = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                time.sleep(min(self.max_backoff, max(delay, retry_after or 0.0)))
            try:
                content = self._complete(body)
            except _Transient as e:
                last_error, retry_after = str(e), e.retry_after
            else:
                try:
                    return parse(content)
                except ValueError as e:
                    last_error, retry_after = f"malformed answer: {e}", None
            log.warning("%s", self._scrub(f"{self.url} attempt {attempt + 1}/{self.retries + 1} failed: "
                                          f"{last_error}"))
        raise EndpointError(self._scrub(f"{self.url}: no valid answer after {self.retries + 1} attempts "
                                        f"(last: {last_error})"))

    def _complete(self, body: bytes) -> str:
        """One request, redirects included, under one deadline -> the answer's text (key scrubbed)."""
        deadline = time.monotonic() + self.timeout
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            reply = self._post(url, body, deadline)
            if reply.status not in (301, 302, 303, 307, 308):
                break
            url = self._redirect_target(url, reply)
        else:
            raise EndpointError(self._scrub(f"{self.url}: more than {MAX_REDIRECTS} redirects"))
        if reply.status in _RETRY_STATUS or 500 <= reply.status < 600:
            raise _Transient(self._status_text(reply), _retry_after(reply.headers))
        if not 200 <= reply.status < 300:
            raise EndpointError(self._scrub(f"{url} refused the request: {self._status_text(reply)}"))
        try:
            content = json.loads(reply.body.decode("utf-8"))["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Transient(f"not a chat completion ({type(e).__name__}): {self._excerpt(reply.body)}") from None
        if not isinstance(content, str) or not content.strip():
            shown = "null" if content is None else f"an empty {type(content).__name__}"
            raise _Transient(f"the answer has no text (message content is {shown})")
        return self._scrub(content)

    def _post(self, url: str, body: bytes, deadline: float) -> _Reply:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme]
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # A connection class for the Host header and default port; the socket is ours (see _connect).
        conn = http.client.HTTPSConnection(host, port, context=self._tls) if self._tls else \
            http.client.HTTPConnection(host, port)
        sock = None
        try:
            sock = conn.sock = _connect(host, port, deadline, self._tls)
            conn.request("POST", target, body=body, headers=headers)
            response = conn.getresponse()
            if response.length is not None and response.length > MAX_ANSWER_BYTES:
                raise _Transient(f"the answer announces {response.length} bytes, more than {MAX_ANSWER_BYTES}")
            data = response.read() if response.length is not None else response.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                raise _Transient(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
            return _Reply(response.status, response.reason, response.headers, data)
        except TimeoutError:
            raise _Transient(f"no complete answer within {self.timeout:g} s (the timeout bounds the whole "
                             "request)") from None
        except http.client.IncompleteRead as e:
            raise _Transient(f"incomplete answer: the connection closed after {len(e.partial)} bytes, "
                             f"{e.expected} more expected") from None
        except ssl.SSLCertVerificationError as e:
            raise EndpointError(self._scrub(f"{url}: TLS certificate not trusted ({e.verify_message})")) from None
        except (http.client.HTTPException, OSError) as e:
            raise _Transient(f"connection failed: {type(e).__name__}: {self._excerpt(str(e))}") from None
        finally:
            if sock is not None:
                sock.release()

    def _redirect_target(self, url: str, reply: _Reply) -> str:
        location = reply.headers.get("Location")
        if not location:
            raise EndpointError(self._scrub(f"{url} answered {reply.status} (a redirect) with no Location"))
        target = urllib.parse.urljoin(url, location.strip())
        if _origin(target) != self._origin:
            scheme, host, port = _origin(target)
            raise EndpointError(self._scrub(
                f"{url} redirected ({reply.status}) to another origin, {scheme}://{host}:{port}; not followed, "
                f"so that the API key is never sent there. If you trust it, pass its address as the URL."))
        if reply.status in (301, 302, 303):
            raise EndpointError(self._scrub(
                f"{url} answered {reply.status}, a redirect to {target} that would turn the POST into a GET; "
                f"not followed. Pass that address as the URL."))
        return target

    def _status_text(self, reply: _Reply) -> str:
        """``HTTP 429 Too Many Requests: <the start of the body>``, parts the server left empty left out."""
        reason, body = self._excerpt(reply.reason), self._excerpt(reply.body)
        return f"HTTP {reply.status}" + (f" {reason}" if reason else "") + (f": {body}" if body else "")

    def _scrub(self, text: str) -> str:
        """``text`` without the API key (as sent, JSON-escaped or percent-encoded)."""
        if not self._api_key:
            return text
        for form in {self._api_key, json.dumps(self._api_key)[1:-1], urllib.parse.quote(self._api_key, safe="")}:
            text = text.replace(form, "<api key>")
        return text

    def _excerpt(self, data: bytes | str, limit: int = 200) -> str:
        """Server text for a message: scrubbed before it is cut, so that no part of the key survives."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        text = " ".join(self._scrub(text).split())
        return text if len(text) <= limit else text[:limit] + "..."


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)


def _retry_after(headers: http.client.HTTPMessage) -> float | None:
    value = (headers.get("Retry-After") or "").strip()
    return float(value) if value.isdigit() else None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _connect(host: str, port: int, deadline: float, tls: ssl.SSLContext | None) -> _DeadlineSocket:
    sock = socket.create_connection((host, port), timeout=_remaining(deadline))
    try:
        if tls is not None:
            sock.settimeout(_remaining(deadline))  # the handshake as a whole ends by the socket timeout
            sock = tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return _DeadlineSocket(sock, deadline)


class _DeadlineSocket:
    """The part of a socket that ``http.client`` uses after connecting (``sendall``, ``makefile``, ``close``),
    with every send and every read ending by one monotonic deadline; ``release`` closes it."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_remaining(self._deadline))  # sendall's timeout covers the whole send
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        """``http.client`` calls this as soon as it knows the server will close, while the body may still be
        unread (a real socket defers the close until its file is closed): the socket stays open until
        ``release``."""

    def release(self) -> None:
        self._sock.close()


class _DeadlineReader(io.RawIOBase):
    """Raw reads of a socket, each given only the time left before the deadline."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        return self._sock.recv_into(buffer)
