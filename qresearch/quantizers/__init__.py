"""Quantizer plugins: one module per algorithm, each registering itself by name.

Public API: ``register``, ``get``, ``names``, ``create``, ``Quantizer``.
"""
from qresearch.quantizers.base import Quantizer
from qresearch.quantizers.channels import register_channel_axes
from qresearch.quantizers.registry import create, get, names, parameters, register

# Built-ins register themselves on import, exactly like a user's plugin.
from qresearch.quantizers import a2q, dorefa, lsq, lsq_plus, minmax, pact, pot  # noqa: E402,F401

__all__ = ["Quantizer", "create", "get", "names", "parameters", "register", "register_channel_axes"]
