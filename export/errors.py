"""Errors raised by training and export (part of ``parm.errors``' hierarchy), so callers (the CLI, the repository
writer) can catch them by meaning.

Messages say what was expected, what came, and which file, model or tensor was involved.
"""

from parm.errors import DataError, ExportError, ExportMismatchError

__all__ = ["DataFormatError", "ExportError", "ExportMismatchError"]


class DataFormatError(DataError):
    """A query file or folder could not be read: unknown format, bad header, mismatched shapes or labels."""
