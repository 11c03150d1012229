"""Simulated hardware targets (as data), scheme-vs-target checks and verified TFLite deployment.

Public API: ``Target``, ``get``, ``names``, ``register``, ``constrain``, ``verify``,
``convert``, ``NoRuntimeError``, ``KernelSetError``, ``Runtime``/``RUNTIMES``, ``Refusal``/``REFUSALS`` (what a
runtime's converter cannot convert) and ``FLOAT_KEPT`` (what it converts only in float). Built-in targets are
``conf/hardware/*.yaml``.
"""
from qresearch.hardware.constrain import Conflict, constrain
from qresearch.hardware.errors import KernelSetError, NoRuntimeError
from qresearch.hardware.registry import TARGETS, get, load_builtins, names, register
from qresearch.hardware.runtimes import RUNTIMES, Runtime
from qresearch.hardware.target import FixedRange, Target, TensorRules
from qresearch.hardware.unconvertible import FLOAT_KEPT, REFUSALS, Refusal

load_builtins()


def __getattr__(name):  # deployment pulls in the interpreter: import it on first use
    if name in ("verify", "convert", "inspect_model", "simulate", "run_tflite"):
        from qresearch.hardware import deploy

        return getattr(deploy, name)
    raise AttributeError(f"module 'qresearch.hardware' has no attribute {name!r}")


__all__ = ["Conflict", "FLOAT_KEPT", "FixedRange", "KernelSetError", "NoRuntimeError", "REFUSALS", "RUNTIMES",
           "Refusal", "Runtime", "TARGETS", "Target", "TensorRules", "constrain", "convert", "get", "inspect_model",
           "load_builtins", "names", "register", "run_tflite", "simulate", "verify"]
