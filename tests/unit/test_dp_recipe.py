"""DP training's own batch size and learning rate (dp.batch_size, dp.lr): what they fall back to, and bad values."""
from __future__ import annotations

import pytest

from oblivio.config import parse_params
from oblivio.dp_calibration import dp_batch_size, dp_lr
from oblivio.errors import ConfigError


def params(**sections):
    return parse_params({"data": {"columns": {"features": ["f1"]}}, **sections})


def test_dp_has_its_own_batch_and_learning_rate_and_zero_falls_back_to_train() -> None:
    own = params(train={"batch_size": 32, "lr": 0.001}, dp={"batch_size": 200, "lr": 0.02})
    assert (dp_batch_size(own), dp_lr(own)) == (200, 0.02)
    fallback = params(train={"batch_size": 32, "lr": 0.001}, dp={"batch_size": 0, "lr": 0})
    assert (dp_batch_size(fallback), dp_lr(fallback)) == (32, 0.001)
    shipped = params()  # the measured defaults differ from plain training's
    assert (dp_batch_size(shipped), dp_lr(shipped)) == (64, 0.01) != (shipped.train.batch_size, shipped.train.lr)


@pytest.mark.parametrize("key", ["batch_size", "lr"])
def test_negative_dp_batch_or_learning_rate_is_one_clear_error(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"dp\.{key} must be >= 0 \(0: train\.{key}\)"):
        params(dp={key: -1})
