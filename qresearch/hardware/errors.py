"""Errors raised by the hardware package."""
from qresearch.errors import QResearchError


class NoRuntimeError(QResearchError, RuntimeError):
    """The target has no runtime here: it can be simulated but not deployed and checked."""
