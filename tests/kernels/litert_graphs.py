"""FakeQuant graphs converted to int8 and run by LiteRT's builtin kernels (no delegates): the reference the
kernel tests compare the emulation with."""
import numpy as np

from qresearch import tf
from qresearch.kernels.grid import Grid


def int8_model(graph) -> bytes:
    """The int8 flatbuffer of ``graph`` (a ``tf.function`` with an input signature, FakeQuant ops giving its ranges)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph.get_concrete_function()], graph)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def litert_interpreter(graph, resolver=None, model: bytes = None):
    """The int8 model of ``graph`` (``int8_model``, or ``model`` already converted) allocated in LiteRT's interpreter
    with the builtin kernels (what ``verify`` compares against; ``resolver``: another ``OpResolverType`` by name,
    "BUILTIN" adds the XNNPACK delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=model if model is not None else int8_model(graph),
                              experimental_op_resolver_type=getattr(OpResolverType,
                                                                     resolver or "BUILTIN_WITHOUT_DEFAULT_DELEGATES"))
    interpreter.allocate_tensors()
    return interpreter


def grid(scale, zero_point):
    """An int8 ``Grid`` as the flatbuffer stores it (float32 scale)."""
    return Grid(tf.constant(float(np.float32(scale)), tf.float64), tf.constant(float(zero_point), tf.float64),
                -128, 127)
