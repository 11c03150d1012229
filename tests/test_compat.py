"""Keras 2 set-up: tfmot needs tf_keras; Keras 3 models are refused with the fix."""
import pytest

from qresearch._compat import ensure_keras2_model, keras, tf, tf_keras_is_legacy
from qresearch.errors import KerasVersionError


def test_tf_keras_is_keras_2():
    assert keras.__version__.startswith("2.")
    assert tf_keras_is_legacy()


def test_tf_keras_models_pass():
    ensure_keras2_model(keras.Sequential([keras.layers.Dense(2, input_shape=(3,))]))
    inputs = keras.Input((3,))
    ensure_keras2_model(keras.Model(inputs, keras.layers.Dense(1)(inputs)))


def test_keras3_model_gives_the_fix():
    keras3 = pytest.importorskip("keras")
    assert keras3.__version__.startswith("3.")
    model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
    with pytest.raises(KerasVersionError) as info:
        ensure_keras2_model(model)
    msg = str(info.value)
    assert "Keras 3" in msg and "import tf_keras as keras" in msg and "from qresearch import keras" in msg
    assert isinstance(info.value, TypeError)
    # Importing Keras 3 did not change what tf.keras is in this process.
    assert tf_keras_is_legacy()


def test_other_objects_are_refused():
    with pytest.raises(KerasVersionError, match="expected a tf_keras.Model"):
        ensure_keras2_model(tf.Module())
