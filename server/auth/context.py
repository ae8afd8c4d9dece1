"""The credentials a client call carries, as a context variable of the task serving the call.

The gRPC interceptor (server/v3rpc/interceptor.py) sets them from the call's metadata ("token",
or "authorization" with an optional "Bearer " prefix, as etcd reads them) and, on a TLS
connection with a verified client certificate, the certificate's common name; the JSON gateway
sets them from its Authorization header. The server resolves them lazily, only where etcd looks
at them (an RPC that never checks credentials never fails on a bad token).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CallCredentials",
    "common_name",
    "credentials",
    "from_metadata",
    "set_credentials",
    "with_common_name",
]

TOKEN_FIELD_GRPC = "token"
TOKEN_FIELD_SWAGGER = "authorization"


@dataclass(frozen=True, slots=True)
class CallCredentials:
    token: str | None = None
    # the verified client certificate's common name (TLS with client certificates)
    common_name: str | None = None


_NONE = CallCredentials()
_current: contextvars.ContextVar[CallCredentials] = contextvars.ContextVar(
    "petcd_call_credentials", default=_NONE
)


def credentials() -> CallCredentials:
    return _current.get()


def set_credentials(c: CallCredentials) -> None:
    _current.set(c)


def from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    token: str | None = None
    swagger: str | None = None
    for k, v in metadata or ():
        value = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        if k == TOKEN_FIELD_GRPC and token is None:
            token = value
        elif k == TOKEN_FIELD_SWAGGER and swagger is None:
            swagger = value
    raw = token if token is not None else swagger
    if raw is None:
        return None
    return raw.removeprefix("Bearer ")


def common_name(context: Any) -> str | None:
    """The verified client certificate's common name of a grpc.aio call, if any (a context
    without auth_context(), like the JSON gateway's, has none)."""
    auth_context = getattr(context, "auth_context", None)
    if auth_context is None:
        return None
    try:
        names = auth_context().get("x509_common_name")
    except Exception:
        return None
    if not names:
        return None
    return names[0].decode(errors="replace") if isinstance(names[0], bytes) else str(names[0])


def with_common_name(context: Any) -> None:
    """Add the call's client certificate common name to the credentials already taken."""
    cn = common_name(context)
    if cn is not None:
        _current.set(CallCredentials(_current.get().token, cn))
