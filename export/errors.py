"""Errors raised by training and export, so callers (the CLI, the repository writer) can catch them by meaning.

Messages say what was expected, what came, and which file, model or tensor was involved.
"""

from parm.errors import ParmError


class ExportError(ParmError):
    """Root of every error raised by ``parm.export``."""


class DataFormatError(ExportError, ValueError):
    """A query file or folder could not be read: unknown format, bad header, mismatched shapes or labels."""


class ExportMismatchError(ExportError):
    """An exported model (ONNX or TorchScript) disagrees with the eager torch module it was exported from."""
