"""Session-wide data and trained models for the deployment tests: built once, shared by the files."""
import tempfile

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


@pytest.fixture
def converter_log_dir(monkeypatch, tmp_path):
    """The temporary folder of the test: where a failed conversion saves the converter's log (not /tmp, where
    every test run used to leave one)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path
