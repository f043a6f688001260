"""Workers on other Triton servers: a model called over gRPC with tritonclient's asyncio client.

One client per worker, created on the orchestrator's loop (gRPC asyncio objects belong to the loop that created
them) and closed in the adapter's ``finalize``. Each call carries the request's remaining time as its deadline, and
the connection sends keepalive pings (``contract.GRPC_KEEPALIVE_*``; workers start with matching flags), so a dead
peer is noticed without a call to time out. Imported only by a gateway: a single server needs no gRPC client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from .config import OrchestratorConfig
from .contract import GRPC_KEEPALIVE_TIME_MS, GRPC_KEEPALIVE_TIMEOUT_MS
from .errors import TargetError
from .groups import Tensors
from .workers import Health, Worker, WorkerMonitor, WorkerPool, WorkerRole

REQUEST_ONLY_STATUSES = ("StatusCode.INVALID_ARGUMENT",)
"""gRPC statuses that refuse one request and say nothing about the worker; every other failure counts against it."""

RECONNECT_BACKOFF_MS = (100, 1000)
"""A lost connection is tried again after 0.1 s, backing off to at most 1 s (gRPC's defaults, 1 s up to 120 s,
would keep a restarted worker out for minutes: its probes fail until the channel reconnects)."""
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", GRPC_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", GRPC_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
    ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
]


class GrpcTarget:
    """One model on one worker."""

    def __init__(self, client: grpcaio.InferenceServerClient, model: str, address: str) -> None:
        self.name = model
        self._client = client
        self._where = f"{model}@{address}"

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        output_names: Sequence[str],
        on_outputs: Callable[[Tensors], None] | None = None,
        timeout: float | None = None,
    ) -> Tensors:
        request = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(tensor)
        wanted = [grpcclient.InferRequestedOutput(name) for name in output_names]
        if timeout is not None and timeout <= 0:
            raise TargetError(self._where, "no time left before the request's deadline", worker_fault=False)
        try:
            result = await self._client.infer(self.name, request, outputs=wanted, client_timeout=timeout)
        except InferenceServerException as error:
            fault = str(error.status()) not in REQUEST_ONLY_STATUSES
            raise TargetError(self._where, error.message() or str(error), worker_fault=fault) from None
        outputs = {}
        for name in output_names:
            array = result.as_numpy(name)
            if array is None:
                raise TargetError(self._where, f"its response lacks output '{name}'")
            outputs[name] = array
        if on_outputs is not None:
            on_outputs(outputs)
        return outputs


def grpc_worker(
    address: str, role: WorkerRole, models: Sequence[str], cooldown_s: float, readmit_probes: int
) -> Worker:
    """A worker at ``address`` serving ``models`` (the first is the one an F call uses), with its own connection.
    Must be called on the orchestrator's loop thread."""
    client = grpcaio.InferenceServerClient(address, channel_args=CHANNEL_ARGS)

    async def probe(timeout: float) -> bool:
        return bool(await client.is_server_ready(client_timeout=timeout))

    return Worker(
        name=address,
        role=role,
        targets={model: GrpcTarget(client, model, address) for model in models},
        health=Health(cooldown_s, readmit_probes),
        probe=probe,
        close=client.close,
    )


async def remote_pools(config: OrchestratorConfig) -> tuple[WorkerPool, WorkerPool, WorkerMonitor]:
    """A gateway's pools and their monitor, with the workers' addresses resolved once. Runs on the orchestrator's
    loop (the clients are created there). Without ``parity_workers``, the F workers serve the parity models too,
    and a group's parity goes to one that holds none of its members."""
    cooldown_s = config.worker_cooldown_ms / 1000
    readmit = config.worker_readmit_probes

    def factory(role: WorkerRole, models: tuple[str, ...]) -> Callable[[str], Worker]:
        return lambda address: grpc_worker(address, role, models, cooldown_s, readmit)

    if config.parity_workers:
        f_pool = WorkerPool(WorkerRole.F, factory=factory(WorkerRole.F, config.f_models))
        parity_pool = WorkerPool(WorkerRole.PARITY, factory=factory(WorkerRole.PARITY, config.parity_models))
        named = [(f_pool, config.f_workers), (parity_pool, config.parity_workers)]
    else:
        f_pool = WorkerPool(WorkerRole.F, factory=factory(WorkerRole.F, config.f_models + config.parity_models))
        parity_pool = f_pool
        named = [(f_pool, config.f_workers)]
    clock = asyncio.get_running_loop().time
    monitor = WorkerMonitor(named, config.worker_probe_ms / 1000, config.worker_resolve_ms / 1000, clock)
    await monitor.resolve()
    return f_pool, parity_pool, monitor
