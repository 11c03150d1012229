"""Errors raised by the hardware package."""
from qresearch.errors import QResearchError


class NoRuntimeError(QResearchError, RuntimeError):
    """The target has no runtime here: it can be simulated but not deployed and checked."""


class KernelSetError(QResearchError, RuntimeError):
    """The runtime's kernel set cannot run the converted model (LiteRT failed to prepare it)."""
