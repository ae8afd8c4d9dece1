"""URLs as etcd's flags take them (etcd's client/pkg/types URLs, URLsMap and netutil)."""

from __future__ import annotations

from urllib.parse import urlsplit

from server.errors import EtcdError

__all__ = ["BadURLsError", "host_port", "parse_initial_cluster", "validate_urls"]


class BadURLsError(EtcdError):
    """given member URLs are invalid"""


def validate_urls(urls: list[str]) -> None:
    if not urls:
        raise BadURLsError("no URL given")
    for url in urls:
        u = urlsplit(url)
        if u.scheme not in ("http", "https", "unix", "unixs") or not u.netloc or u.path not in ("", "/"):
            raise BadURLsError(f"URL must be scheme://host:port: {url!r}")


def parse_initial_cluster(spec: str) -> dict[str, list[str]]:
    """'a=http://x:2380,b=http://y:2380,a=http://z:2380' -> {'a': [...], 'b': [...]}."""
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, url = part.partition("=")
        if not sep or not url:
            raise ValueError(f"invalid --initial-cluster entry {part!r}: expected name=url")
        validate_urls([url])
        out.setdefault(name, []).append(url)
    return out


def host_port(url: str) -> tuple[str, int]:
    """'http://localhost:2379' -> ('127.0.0.1', 2379): listeners bind IPv4 loopback for localhost."""
    u = urlsplit(url)
    if u.hostname is None or u.port is None:
        raise ValueError(f"URL needs a host and a port: {url!r}")
    host = "127.0.0.1" if u.hostname == "localhost" else u.hostname
    return host, u.port
