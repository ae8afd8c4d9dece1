"""The official kubernetes client (sync), used through one small dict-in/dict-out layer.

Why the synchronous client in threads rather than kubernetes.aio: the sync client is the
long-standing, widely used path of the official package, retry_on_conflict is its 1:1 port
of client-go's RetryOnConflict, and the controllers' structure (informer threads + a work
queue + N worker threads) is client-go's own; concurrency here is I/O-bound, so threads cost
nothing, and a conflict storm really is N writers in parallel. What asyncio would give
(cheap cancellation) we get by closing the watch socket from the stopping thread (Watch.stop
in the client does the same) and by bounding every request with a timeout.

Configuration: load_api_client(kubeconfig) uses the kubeconfig file when given, the in-cluster
service account when running in a pod (KUBERNETES_SERVICE_HOST), and else $KUBECONFIG or
~/.kube/config. urllib3 retries connection failures (the request was not sent) and GETs, never a
write whose answer was lost: replaying it blindly could apply it twice (counter.py resolves
such writes through the resourceVersion they were conditioned on).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP = "petcd.example.com"
VERSION = "v1alpha1"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """An API resource: group ("" for core), version, plural, and the Kind for logs."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        p = "/api/v1" if self.group == "" else f"/apis/{self.group}/{self.version}"
        if namespace is not None and self.namespaced:
            p += f"/namespaces/{namespace}"
        p += f"/{self.plural}"
        if name is not None:
            p += f"/{name}"
            if subresource:
                p += f"/{subresource}"
        return p


COUNTERS = Resource(GROUP, VERSION, "counters", "Counter")
REPLICATED_CONFIGMAPS = Resource(GROUP, VERSION, "replicatedconfigmaps", "ReplicatedConfigMap")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)


def load_api_client(
    kubeconfig: str | None = None, context: str | None = None, pool_size: int = 32
) -> client.ApiClient:
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool_size
    cfg.retries = urllib3.Retry(
        total=3,
        connect=3,
        read=2,
        status=0,
        other=0,
        redirect=0,
        allowed_methods=frozenset({"GET", "HEAD"}),
        backoff_factor=0.1,
        raise_on_status=False,
    )
    return client.ApiClient(cfg)


def meta(obj: Obj) -> Obj:
    m: Obj = obj.setdefault("metadata", {})
    return m


def rv_of(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))


def key_of(obj: Obj) -> str:
    m = obj.get("metadata", {})
    ns = m.get("namespace")
    return f"{ns}/{m['name']}" if ns else str(m["name"])


def split_key(key: str) -> tuple[str | None, str]:
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, ns)


class WatchStream:
    """One watch request: iterate events (dicts with type and object); close() from any thread
    ends the iteration (the socket is shut down so a blocked read returns at once)."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self._closed = False
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[Obj]:
        buf = b""
        try:
            for chunk in self._resp.stream(amt=None, decode_content=False):
                if self._closed:
                    return
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if line.strip():
                        yield json.loads(line)
                    if self._closed:
                        return
        except Exception:
            if self._closed:
                return
            raise
        finally:
            self._release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(Exception):
            sock = getattr(getattr(self._resp, "connection", None), "sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._resp.close()
        with contextlib.suppress(Exception):
            self._resp.release_conn()


class Kube:
    """Requests to the apiserver through the official client's ApiClient (auth, TLS, pool)."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.request_timeout = request_timeout

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, **kw: Any) -> Kube:
        return cls(load_api_client(kubeconfig, **kw))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api_client.close()  # type: ignore[no-untyped-call]

    # -- raw ---------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        q = [(k, _q(v)) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, hdrs, b, post = self.api_client.param_serialize(
            method, path, query_params=q, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        return self.api_client.call_api(
            m, url, hdrs, b, post, _request_timeout=timeout if timeout is not None else self.request_timeout
        )

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj:
        r = self._send(method, path, query, body, content_type)
        data = r.read()
        if not 200 <= r.status <= 299:
            raise ApiException.from_response(http_resp=r, body=data.decode(errors="replace"), data=None)
        out: Obj = json.loads(data) if data else {}
        return out

    # -- verbs -------------------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str | None, name: str, subresource: str | None = None) -> Obj:
        return self.request("GET", res.path(namespace, name, subresource))

    def get_or_none(self, res: Resource, namespace: str | None, name: str) -> Obj | None:
        """get(), or None where it answers 404 Not Found."""
        try:
            return self.get(res, namespace, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, res: Resource, namespace: str | None = None, **params: Any) -> Obj:
        """One page: params are the API's query parameters (resourceVersion,
        resourceVersionMatch, limit, continue, labelSelector, fieldSelector)."""
        return self.request("GET", res.path(namespace), params)

    def create(self, res: Resource, namespace: str | None, body: Obj, **params: Any) -> Obj:
        return self.request("POST", res.path(namespace), params, body)

    def replace(
        self, res: Resource, namespace: str | None, name: str, body: Obj, subresource: str | None = None
    ) -> Obj:
        """PUT: with metadata.resourceVersion set the write is conditional (409 if stale)."""
        return self.request("PUT", res.path(namespace, name, subresource), None, body)

    def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str = "application/merge-patch+json",
        subresource: str | None = None,
    ) -> Obj:
        return self.request("PATCH", res.path(namespace, name, subresource), None, body, content_type)

    def delete(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        pre = {k: v for k, v in (("resourceVersion", resource_version), ("uid", uid)) if v}
        if pre:
            body["preconditions"] = pre
        return self.request("DELETE", res.path(namespace, name), None, body)

    def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        allow_bookmarks: bool = True,
        **params: Any,
    ) -> WatchStream:
        """Start a watch (raises ApiException when the apiserver refuses it outright)."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true" if allow_bookmarks else None,
            "timeoutSeconds": timeout_seconds,
            **params,
        }
        # connect timeout 10 s; reads may wait until the server ends the watch (+ slack)
        r = self._send("GET", res.path(namespace), query, timeout=(10.0, timeout_seconds + 30.0))
        if not 200 <= r.status <= 299:
            data = r.read()
            raise ApiException.from_response(http_resp=r, body=data.decode(errors="replace"), data=None)
        return WatchStream(r.response)


def _q(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
