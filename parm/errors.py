"""The package's exceptions: one root, ``ParmError``, and a few meaningful subclasses.

Messages say what was expected, what came, and which model, tensor or file. The orchestrator core keeps its own
small root (``OrchestratorError``: it is copied into repositories and imports nothing of this package); its
``ConfigError`` is a base of this one, so ``except ConfigError`` of either module catches every bad configuration.
"""

from __future__ import annotations

from parm.backend.orchestrator.errors import ConfigError as CoreConfigError


class ParmError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ParmError, CoreConfigError, ValueError):
    """A configuration (config.pbtxt, a typed spec, a CLI option, a code's shape) is invalid or inconsistent."""


class DataError(ParmError, ValueError):
    """Queries, labels or a model file cannot be used as given (format, shape, missing labels)."""


class ExportError(ParmError):
    """Training, export or verification of a code's networks failed."""


class ExportMismatchError(ExportError):
    """An exported model (ONNX or TorchScript) disagrees with the eager torch module it was exported from."""


class ServerError(ParmError, RuntimeError):
    """The embedded Triton server could not be set up, started, reached or stopped."""


class LoadTestError(ParmError, RuntimeError):
    """A load test, benchmark or soak could not run as planned."""


class FaultError(LoadTestError):
    """A fault could not be injected or undone (e.g. no such model instance process)."""
