"""What the server lets in: ASGI middleware on the FastAPI app Gradio creates (passed through `launch(app_kwargs=)`),
so it sees every request, to every route (the page, Gradio's API, and any API mounted on the same app).

* Host check (DNS rebinding): a web page on another site can make the browser talk to 127.0.0.1 under the
  site's own name; such requests carry that name in `Host`. Only the names the server is meant to be reached
  by pass (loopback names by default; the --listen host and --allowed-hosts otherwise). Others get 400.
* Origin check (cross-site requests): a state-changing request (anything but GET/HEAD/OPTIONS, and every
  websocket) that carries an `Origin` must come from a page of this very server (allowed name, and the port
  served or the very host:port the request was addressed to, as behind a reverse proxy);
  browsers always send `Origin` on such requests, scripts such as gradio_client or curl send none. Others 403.
* Login slow-down: each failed `/login` from a client makes that client's next attempts wait longer
  (exponential, capped), so passwords cannot be guessed at full speed; a success clears it.
* The login page carries no names: for a visitor who is not logged in, the API description Gradio embeds in
  its HTML pages (`window.gradio_api_info`, which lists dropdown choices: embeddings, hypernetworks, checkpoints,
  templates) is replaced by null. /config and /gradio_api/info already require the login.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections import OrderedDict
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.middleware import Middleware

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOGIN_PATHS = ("/login", "/login/")
API_INFO_SCRIPT = re.compile(rb"window\.gradio_api_info\s*=\s*.*?;</script>", re.DOTALL)


def host_name(value: str | None) -> str | None:
    """The name part of a Host header value ("example.org:7860" -> "example.org", "[::1]:80" -> "::1")."""
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else None
    if value.count(":") > 1:  # a bare IPv6 address
        return value
    return value.split(":", 1)[0].rstrip(".")


def default_allowed_hosts(server_name: str) -> set[str]:
    """Loopback names, plus, when serving a specific address, that address; serving on every interface
    (0.0.0.0 / ::) adds this machine's name and addresses."""
    names = set(LOOPBACK_NAMES)
    server_name = (server_name or "").strip().lower()
    if server_name in ("0.0.0.0", "::", ""):
        for name in {socket.gethostname(), socket.getfqdn()}:
            names.add(name.lower())
            try:
                names.update(info[4][0].lower() for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    else:
        names.add(host_name(server_name) or server_name)
    return names


def parse_allowed_hosts(text: str | None) -> set[str]:
    """--allowed-hosts "a.example,10.0.0.5" -> names ("*" allows any Host)."""
    out = set()
    for item in (text or "").split(","):
        item = item.strip().lower()
        if item:
            out.add(item if item == "*" else (host_name(item) or item))
    return out


def _host_and_port(value: str | None, scheme: str):
    """(canonical name, port) of a Host header value; the port defaults to the scheme's."""
    name = host_name(value)
    if name is None:
        return None
    rest = value.strip().rsplit("]", 1)[-1] if value.strip().startswith("[") else value.strip()
    port_text = rest.rsplit(":", 1)[1] if ":" in rest and rest.count(":") == 1 else ""
    port = int(port_text) if port_text.isdigit() else {"http": 80, "https": 443}.get(scheme)
    return _canonical(name), port


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


class LoginThrottle:
    """Per-client count of failed logins -> how long the next attempt waits (0, 0, 0.25 s, 0.5 s, 1 s, ... 8 s).
    Clients idle for `forget_after` seconds start over; at most `max_clients` are remembered."""

    def __init__(self, free_attempts: int = 2, first_delay: float = 0.25, max_delay: float = 8.0,
                 forget_after: float = 900.0, max_clients: int = 10000):
        self.free_attempts, self.first_delay, self.max_delay = free_attempts, first_delay, max_delay
        self.forget_after, self.max_clients = forget_after, max_clients
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def delay(self, client: str) -> float:
        count, last = self.failures.get(client, (0, 0.0))
        if time.monotonic() - last > self.forget_after:
            return 0.0
        if count < self.free_attempts:
            return 0.0
        return min(self.first_delay * 2 ** (count - self.free_attempts), self.max_delay)

    def record(self, client: str, success: bool) -> None:
        if success:
            self.failures.pop(client, None)
            return
        count, last = self.failures.pop(client, (0, 0.0))
        now = time.monotonic()
        if now - last > self.forget_after:
            count = 0
        self.failures[client] = (count + 1, now)
        while len(self.failures) > self.max_clients:
            self.failures.popitem(last=False)


class RequestGuard:
    """The ASGI middleware described in the module docstring. `gradio_app()` returns Gradio's App (for its
    login tokens), or None while it is not created yet."""

    def __init__(self, app, allowed_hosts, port: int | None, throttle: LoginThrottle | None = None,
                 gradio_app=None):
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.allowed = {_canonical(name) for name in allowed_hosts}
        self.port = port
        self.throttle = throttle
        self.gradio_app = gradio_app or (lambda: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if not self.any_host and not self.host_allowed(headers.get("host")):
            return await self.refuse(scope, send, 400, "This server is not served under that host name "
                                     "(see --allowed-hosts).")
        method = scope.get("method", "GET")
        if (scope["type"] == "websocket" or method not in SAFE_METHODS) and "origin" in headers:
            if not self.origin_allowed(headers["origin"], headers.get("host")):
                return await self.refuse(scope, send, 403, "Requests from pages of another site are not accepted.")
        path = scope.get("path", "")
        if self.throttle is not None and method == "POST" and path in LOGIN_PATHS:
            return await self.login(scope, receive, send)
        if method == "GET" and self.needs_login(headers):
            return await self.without_api_info(scope, receive, send)
        return await self.app(scope, receive, send)

    # --- checks ------------------------------------------------------------------------------------------
    def host_allowed(self, value: str | None) -> bool:
        name = host_name(value)
        return name is not None and _canonical(name) in self.allowed

    def origin_allowed(self, origin: str, host: str | None = None) -> bool:
        """The page that sent the request is one of this server's: an allowed name, and either the port served
        or exactly the host:port the request was sent to (a reverse proxy in front, on its own port)."""
        try:
            parts = urlsplit(origin.strip())
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (sandboxed frames, file: pages) and anything odd
        name = _canonical(parts.hostname.lower())
        if not self.any_host and name not in self.allowed:
            return False
        if self.port is None or port == self.port:
            return True
        return (name, port) == _host_and_port(host, parts.scheme)

    def needs_login(self, headers: dict) -> bool:
        app = self.gradio_app()
        if app is None or getattr(app, "auth", None) is None:
            return False
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is simply no login
            return True
        tokens = getattr(app, "tokens", {})
        return not any(name.startswith("access-token") and morsel.value in tokens for name, morsel in cookie.items())

    # --- responses ---------------------------------------------------------------------------------------
    async def refuse(self, scope, send, status: int, text: str):
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = text.encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def login(self, scope, receive, send):
        client = (scope.get("client") or ("?",))[0]
        delay = self.throttle.delay(client)
        if delay:
            await asyncio.sleep(delay)
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        code = status.get("code", 500)
        if code < 500:
            self.throttle.record(client, success=code < 300)

    async def without_api_info(self, scope, receive, send):
        """A page for a visitor who is not logged in (Gradio's login form), without the API description;
        responses other than HTML pass untouched."""
        start, chunks = {}, []

        async def hold(message):
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if headers.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in headers:
                    start.update(message)
                    return
                await send(message)
            elif message["type"] == "http.response.body" and start:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = API_INFO_SCRIPT.sub(b"window.gradio_api_info = null;</script>", b"".join(chunks))
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
            else:
                await send(message)

        await self.app(scope, receive, hold)


def guard_middleware(allowed_hosts, port: int | None, throttle_logins: bool, gradio_app=None) -> list[Middleware]:
    """For `demo.launch(app_kwargs={"middleware": guard_middleware(...)})`."""
    return [Middleware(RequestGuard, allowed_hosts=set(allowed_hosts), port=port,
                       throttle=LoginThrottle() if throttle_logins else None, gradio_app=gradio_app)]
