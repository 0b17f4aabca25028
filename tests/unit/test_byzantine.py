"""The test-only Byzantine client mode (ClientConfig.byzantine) corrupts exactly the uploaded
delta's floating tensors, the way the poisoning integration test needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedvox.client.config import BYZANTINE_MODES, load_client_config
from fedvox.client.runner import poison
from fedvox.wire.tensors import StateDict
from tests.helpers import f32


def update() -> StateDict:
    return {
        "w": f32([[1.5, -2.0], [0.0, 4.0]]),
        "h": np.array([3.0, -1.0], dtype=np.float16),
        "n": np.array([7], dtype=np.int64),  # a counter: never touched
    }


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("", 1.0), ("scale100", 100.0), ("signflip", -1.0), ("nan", float("nan"))],
)
def test_poison_scales_floats_only(mode: str, expected: float) -> None:
    honest = update()
    poisoned = poison(honest, mode)
    for name, array in honest.items():
        assert poisoned[name].dtype == array.dtype and poisoned[name].shape == array.shape
        if array.dtype.kind != "f":
            np.testing.assert_array_equal(poisoned[name], array)
        else:
            np.testing.assert_array_equal(poisoned[name], np.multiply(array, expected))
    np.testing.assert_array_equal(update()["w"], honest["w"])  # the input is left as it was


def test_config_accepts_the_modes_and_refuses_others(tmp_path: Path) -> None:
    base = {"site_id": "site-a", "data_root": str(tmp_path)}
    for mode in BYZANTINE_MODES:
        config = load_client_config(overrides={**base, "byzantine": mode}, environ={})
        assert config.byzantine == mode
    with pytest.raises(ValueError, match="byzantine must be one of"):
        load_client_config(overrides={**base, "byzantine": "scale1000"}, environ={})
