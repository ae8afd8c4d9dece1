"""What Go's net/http answers on its own, as etcd's HTTP listeners do: http.Error, http.NotFound,
405 with Allow, ServeMux's redirects of unclean paths (//health, /a/../health) and of a subtree
root without its slash (/v3 -> /v3/), and encoding/json's escaping."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = [
    "TEXT",
    "clean_path",
    "go_http_error",
    "go_json",
    "method_not_allowed",
    "not_found",
    "serve_mux_redirects",
]

TEXT = "text/plain; charset=utf-8"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def go_http_error(text: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """Go's http.Error: the text and a newline, as plain text, not to be sniffed."""
    return web.Response(
        status=status,
        body=(text + "\n").encode(),
        headers={"Content-Type": TEXT, "X-Content-Type-Options": "nosniff", **(headers or {})},
    )


def method_not_allowed(allow: str = "GET") -> web.Response:
    return go_http_error("Method Not Allowed", 405, {"Allow": allow})


async def not_found(request: web.Request) -> web.Response:
    """Go's http.NotFound."""
    return go_http_error("404 page not found", 404)


_JSON_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def go_json(doc: dict[str, str]) -> str:
    """encoding/json.Marshal of a flat string map/struct (keys in the given order)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in _JSON_ESCAPES:
        text = text.replace(ch, esc)
    return text


def clean_path(p: str) -> str:
    """ServeMux's cleanPath: Go's path.Clean, keeping a trailing slash."""
    if not p:
        return "/"
    if not p.startswith("/"):
        p = "/" + p
    parts: list[str] = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    cleaned = "/" + "/".join(parts)
    if p.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _redirect(request: web.Request, path: str) -> web.Response:
    """http.Redirect with 307 (StatusTemporaryRedirect)."""
    location = path + ("?" + request.query_string if request.query_string else "")
    if request.method in ("GET", "HEAD"):
        body = f'<a href="{location}">Temporary Redirect</a>.\n\n'.encode()
        return web.Response(
            status=307, body=body, headers={"Location": location, "Content-Type": "text/html; charset=utf-8"}
        )
    return web.Response(status=307, headers={"Location": location})


def serve_mux_redirects(subtrees: Collection[str] = ()) -> Middleware:
    """A middleware redirecting like ServeMux: unclean paths to their clean form, and each
    subtree root ("/v3") to its pattern ("/v3/")."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if request.method != "CONNECT":
            cleaned = clean_path(path)
            if cleaned != path:
                return _redirect(request, cleaned)
            if path + "/" in subtrees:
                return _redirect(request, path + "/")
        return await handler(request)

    return middleware
