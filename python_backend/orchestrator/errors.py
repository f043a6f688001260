"""Exceptions of the orchestrator core. Messages say what was expected, what came, and which model or tensor."""


class OrchestratorError(Exception):
    """Root of every error raised by the orchestrator core."""


class ConfigError(OrchestratorError):
    """The coded endpoint's configuration is invalid (unknown key, bad value, inconsistent models)."""


class InvalidQueryError(OrchestratorError):
    """One client request is malformed; it is refused alone, never its coding group."""


class TargetError(OrchestratorError):
    """A downstream model (F, a parity model, the encoder or the decoder) answered with an error."""

    def __init__(self, model: str, message: str, *, worker_fault: bool = True) -> None:
        super().__init__(f"model '{model}' failed: {message}")
        self.model = model
        self.worker_fault = worker_fault
        """Whether the failure says something about where the model runs (unreachable, out of time, broken), which
        counts against the worker's health; False for an answer that only refuses this one request."""
