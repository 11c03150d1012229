"""A folder of real images built once per session in tmp: 400 sklearn digits as 8x8 grayscale PNGs
(lossless, so the same pixels can be compared with arrays in memory)."""
import pytest

from image_fixtures import Digits


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Digits:
    """Read-only: tests that change files copy it first."""
    return Digits(tmp_path_factory.mktemp("digits_folder"))
