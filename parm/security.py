"""Who may talk to a Triton server the project starts or deploys: restricted APIs, and keepalive that matches the
gateway's client.

Triton's model-repository, shared-memory, logging and trace APIs let a caller load models, write files (through the
logging API) and map memory: nobody but the operator should reach them. Every server the project starts refuses them
unless a request carries the header ``ADMIN_KEY_HEADER`` with the operator's key (a Kubernetes Secret in production,
``PARM_ADMIN_KEY`` here); inference, health, metadata and statistics stay open to the gateway and to clients.

The gateway pings its workers every ``GRPC_KEEPALIVE_TIME_MS``; with Triton's defaults (a 2-hour keepalive and two
ping strikes) a server answers such pings with GOAWAY, so workers start with ``grpc_keepalive_args()``.
"""

from __future__ import annotations

import os
import secrets

from parm.backend.orchestrator.contract import GRPC_KEEPALIVE_TIME_MS, GRPC_KEEPALIVE_TIMEOUT_MS
from parm.errors import ConfigError

RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
"""The APIs that need the admin key, by Triton 2.51's names (the same for ``--http-restricted-api`` and
``--grpc-restricted-protocol``)."""
ADMIN_KEY_HEADER = "admin-key"
"""The HTTP header that carries the admin key."""
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"
"""The gRPC metadata key that carries it: Triton 2.51 prefixes the configured key with ``triton-grpc-protocol-`` on
gRPC (measured: a call with plain ``admin-key`` is refused, naming this key)."""
ADMIN_KEY_ENV = "PARM_ADMIN_KEY"
"""Where the launcher, the bench and the soak read the admin key from; a fresh random key when it is unset."""


def admin_key() -> str:
    """The operator's key from ``PARM_ADMIN_KEY``; otherwise a random one, set in this process's environment so that
    every server it starts and every tool it runs agree on it."""
    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        key = secrets.token_urlsafe(24)
        os.environ[ADMIN_KEY_ENV] = key
    return key


def restricted_api_args(key: str) -> list[str]:
    """tritonserver flags that refuse ``RESTRICTED_APIS`` without ``ADMIN_KEY_HEADER: key``, on HTTP and gRPC."""
    if not key or any(c in key for c in ",:= \t\n"):
        raise ConfigError("the admin key must be non-empty, without spaces, commas, colons or '='")
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={key}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={key}",
    ]


def admin_headers(key: str | None = None, grpc: bool = False) -> dict[str, str]:
    """The header (HTTP) or metadata (``grpc``) a restricted call carries: model loads by the bench and the soak."""
    return {GRPC_ADMIN_KEY_HEADER if grpc else ADMIN_KEY_HEADER: key if key is not None else admin_key()}


def grpc_keepalive_args() -> list[str]:
    """tritonserver flags under which a worker accepts the gateway's keepalive pings instead of answering GOAWAY."""
    return [
        f"--grpc-keepalive-time={GRPC_KEEPALIVE_TIME_MS}",
        f"--grpc-keepalive-timeout={GRPC_KEEPALIVE_TIMEOUT_MS}",
        "--grpc-keepalive-permit-without-calls=true",
        "--grpc-http2-max-pings-without-data=0",
        f"--grpc-http2-min-recv-ping-interval-without-data={GRPC_KEEPALIVE_TIME_MS // 2}",
        "--grpc-http2-max-ping-strikes=0",
    ]
