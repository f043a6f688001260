"""The coded-inference orchestrator core: plain Python (numpy + asyncio), no Triton import.

Copied into each coded model's version folder by the repository writer, so a model repository is self-contained;
``triton_model.py`` is the thin Triton adapter around it.
"""

from .config import RELOAD_PARAMETER, OrchestratorConfig, OrchestratorSettings, ParityPolicy
from .dispatcher import CRASH_LOG_MARKERS, CodedDispatcher
from .errors import ConfigError, InvalidQueryError, OrchestratorError, TargetError
from .groups import Answer, AnswerSource
from .stats import DispatcherStats
from .tensors import TensorSpec, validate_query
from .workers import Target, Worker, WorkerMonitor, WorkerPool, WorkerRole

__all__ = [
    "CRASH_LOG_MARKERS",
    "RELOAD_PARAMETER",
    "Answer",
    "AnswerSource",
    "CodedDispatcher",
    "ConfigError",
    "DispatcherStats",
    "InvalidQueryError",
    "OrchestratorConfig",
    "OrchestratorError",
    "OrchestratorSettings",
    "ParityPolicy",
    "Target",
    "TargetError",
    "TensorSpec",
    "Worker",
    "WorkerMonitor",
    "WorkerPool",
    "WorkerRole",
    "validate_query",
]
