"""The package's exceptions: one root, ``ParmError``, and a few meaningful subclasses.

Messages say what was expected, what came, and which model, tensor or file.
"""

from __future__ import annotations


class ParmError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ParmError, ValueError):
    """A configuration (config.pbtxt, a typed spec, a CLI option) is invalid or inconsistent."""


class ServerError(ParmError, RuntimeError):
    """The embedded Triton server could not be set up, started, reached or stopped."""


class FaultError(ParmError, RuntimeError):
    """A fault could not be injected or undone (e.g. no such model instance process)."""
