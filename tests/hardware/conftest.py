"""Session-wide data and trained models for the deployment tests: built once, shared by the files."""
import pytest

from deploy_models import digits, train_float_models


@pytest.fixture(scope="session")
def data():
    """sklearn digits (x_train, y_train, x_test, y_test); read-only."""
    return digits()


@pytest.fixture(scope="session")
def float_models(data):
    """mobilenet_like and concat_softmax trained 6 epochs: the float models of the parity tests."""
    return train_float_models(data)
