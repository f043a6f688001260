"""Triton adapter of the coded endpoint (``<name>_coded/1/model.py``): tensors in, a call into the core, answers out.

A default-mode (not decoupled) Python model that answers each request later through its response sender and
returns None from ``execute``: one instance then keeps many requests in flight, and plain HTTP and gRPC clients
work unchanged. The orchestrator core runs on an asyncio loop in a thread of this instance; downstream models are
called with blocking BLS ``exec`` calls on that loop's executor threads (what ``async_exec`` does), and F's answers
are sent from those threads. The core is copied beside this file as ``parm_orchestrator``.
"""

import asyncio
import json
import logging
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import triton_python_backend_utils as pb_utils
from parm_orchestrator import (
    Answer,
    AnswerSource,
    CodedDispatcher,
    InvalidQueryError,
    OrchestratorConfig,
    TargetError,
    validate_query,
)
from parm_orchestrator.contract import RECONSTRUCTED_OUTPUT
from parm_orchestrator.group_code import group_code
from parm_orchestrator.metrics import FLUSH_PERIOD_S, MetricsExporter
from parm_orchestrator.workers import local_pools

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _TritonLogHandler(logging.Handler):
    """Routes the core's ``logging`` records to Triton's log."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            pb_utils.Logger.log_error(message)
        elif record.levelno >= logging.WARNING:
            pb_utils.Logger.log_warn(message)
        else:
            pb_utils.Logger.log_info(message)


class BlsTarget:
    """A model in the same Triton server, called through BLS; every error response becomes a ``TargetError``.

    The call runs on a thread of the loop's executor, as ``async_exec`` would, but with a blocking ``exec``: the
    worker then hands the outputs to ``on_outputs`` itself, so F's answer leaves from that thread at once. A BLS
    call has no deadline of its own (``timeout`` is ignored): the request's deadline answers the client anyway.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    async def infer(self, inputs, output_names, on_outputs=None, timeout=None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._exec, inputs, list(output_names), on_outputs)

    def _exec(self, inputs, output_names, on_outputs):
        request = pb_utils.InferenceRequest(
            model_name=self.name,
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in inputs.items()],
            requested_output_names=output_names,
        )
        response = request.exec()
        if response.has_error():
            raise TargetError(self.name, response.error().message())
        outputs = {}
        for name in output_names:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise TargetError(self.name, f"its response lacks output '{name}'")
            outputs[name] = tensor.as_numpy().copy()
        if on_outputs is not None:
            on_outputs(outputs)
        return outputs


class TritonMetricFactory:
    """``MetricFactory`` over the Python backend's custom-metrics API (served on Triton's metrics port)."""

    def __init__(self) -> None:
        self._families = {}

    def _family(self, name, description, kind):
        if name not in self._families:
            self._families[name] = pb_utils.MetricFamily(name=name, description=description, kind=kind)
        return self._families[name]

    def counter(self, name, description, labels):
        return self._family(name, description, pb_utils.MetricFamily.COUNTER).Metric(labels=dict(labels))

    def gauge(self, name, description, labels):
        return self._family(name, description, pb_utils.MetricFamily.GAUGE).Metric(labels=dict(labels))

    def histogram(self, name, description, labels, buckets):
        family = self._family(name, description, pb_utils.MetricFamily.HISTOGRAM)
        return family.Metric(labels=dict(labels), buckets=list(buckets))


def _supports_response_parameters() -> bool:
    """Triton 2.51 refuses ``InferenceResponse(parameters=...)`` with a TypeError; newer servers accept it."""
    try:
        pb_utils.InferenceResponse(output_tensors=[], parameters={RECONSTRUCTED_OUTPUT: False})
    except TypeError:
        return False
    return True


class TritonPythonModel:
    """The coded endpoint: F's signature plus the ``parm_reconstructed`` flag.

    On a single server, F and the parity models are models of this server (BLS). On a gateway (``f_workers`` set),
    they run on other Triton servers, called over gRPC from the loop; the encoder and decoder stay here.
    """

    def initialize(self, args):
        self._name = args["model_name"]
        self._config = OrchestratorConfig.from_model_config(json.loads(args["model_config"]))
        handler = _TritonLogHandler()
        handler.setFormatter(logging.Formatter(f"{args['model_instance_name']}: %(message)s"))
        core_logger = logging.getLogger("parm_orchestrator")
        core_logger.addHandler(handler)
        core_logger.setLevel(logging.INFO)
        self._response_parameters = _supports_response_parameters()
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            ThreadPoolExecutor(max_workers=self._config.bls_threads, thread_name_prefix=f"{self._name}-bls")
        )
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{self._name}-loop", daemon=True)
        self._thread.start()
        self._responses: queue.SimpleQueue = queue.SimpleQueue()
        self._responder = threading.Thread(target=self._send_responses, name=f"{self._name}-send", daemon=True)
        self._responder.start()
        config = self._config
        monitor = None
        if config.f_workers:
            from parm_orchestrator.remote import remote_pools  # a gateway only: needs tritonclient

            future = asyncio.run_coroutine_threadsafe(remote_pools(config), self._loop)
            f_pool, parity_pool, monitor = future.result(timeout=60)
        else:
            f_pool, parity_pool = local_pools(
                config, [BlsTarget(name) for name in config.f_models], [BlsTarget(n) for n in config.parity_models]
            )
        self._dispatcher = CodedDispatcher(config, f_pool, parity_pool, group_code(config, BlsTarget), self._loop)
        if monitor is not None:
            self._loop.call_soon_threadsafe(self._dispatcher.watch, monitor)
        self._metric_factory = TritonMetricFactory()
        self._metrics = MetricsExporter(
            self._metric_factory, {"model": self._name, "version": str(args["model_version"])}
        )
        self._loop.call_soon_threadsafe(self._flush_metrics_periodically)
        self._finalized = False

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = {tensor.name(): tensor.as_numpy().copy() for tensor in request.inputs()}
                batch = validate_query(inputs, self._config.inputs, self._config.max_batch_size)
            except InvalidQueryError as error:
                sender.send(self._error_response(str(error)), flags=_FINAL)
                continue
            self._loop.call_soon_threadsafe(self._dispatcher.submit, inputs, partial(self._reply, sender, batch))
        return None

    def finalize(self):
        """Answers what is still in flight with an error, then stops the loop; safe to call twice."""
        if self._finalized:
            return
        self._finalized = True
        try:
            asyncio.run_coroutine_threadsafe(self._dispatcher.close(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._responses.put(None)
            self._responder.join(timeout=10)
            self._flush_metrics()
            del self._metrics  # metrics before their families, as the backend requires
            del self._metric_factory

    def _flush_metrics_periodically(self) -> None:
        self._flush_metrics()
        self._loop.call_later(FLUSH_PERIOD_S, self._flush_metrics_periodically)

    def _flush_metrics(self) -> None:
        dispatcher = self._dispatcher
        try:
            self._metrics.flush(
                dispatcher.stats, dispatcher.in_flight, dispatcher.in_flight_groups, dispatcher.open_groups
            )
            if self._config.f_workers:
                self._metrics.flush_workers(dispatcher.workers)
        except Exception as error:  # a metrics failure must never take the endpoint down
            pb_utils.Logger.log_warn(f"{self._name}: exporting metrics failed: {error}")

    def _send_responses(self) -> None:
        """Sends the loop's responses from a thread of its own: a send waits on the server, and the loop must not."""
        while (item := self._responses.get()) is not None:
            self._send_now(*item)

    def _reply(self, sender, batch: int, answer: Answer) -> None:
        if answer.source is AnswerSource.ERROR:
            self._send(sender, self._error_response(answer.error))
            return
        rebuilt = answer.source is AnswerSource.REBUILT
        tensors = [
            pb_utils.Tensor(spec.name, np.ascontiguousarray(answer.outputs[spec.name], dtype=spec.dtype))
            for spec in self._config.outputs
        ]
        tensors.append(pb_utils.Tensor(RECONSTRUCTED_OUTPUT, np.full((batch, 1), rebuilt, dtype=np.bool_)))
        if self._response_parameters:
            response = pb_utils.InferenceResponse(output_tensors=tensors, parameters={RECONSTRUCTED_OUTPUT: rebuilt})
        else:
            response = pb_utils.InferenceResponse(output_tensors=tensors)
        self._send(sender, response)

    def _send(self, sender, response) -> None:
        """Sends at once from a worker thread (F's answers); the loop's answers go through the sending thread."""
        if threading.get_ident() == self._thread.ident:
            self._responses.put((sender, response))
        else:
            self._send_now(sender, response)

    def _send_now(self, sender, response) -> None:
        try:
            sender.send(response, flags=_FINAL)
        except Exception as error:
            pb_utils.Logger.log_error(f"{self._name}: sending a response failed: {error}")

    def _error_response(self, message: str):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self._name}: {message}"))
