import pytest
import torch

from autoseg.errors import UserError
from autoseg.device import resolve_device, resolve_precision


def test_precision_choice():
    assert resolve_precision("fp32", torch.device("cpu")) == (None, False)
    assert resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    dtype, scaler = resolve_precision("auto", torch.device("cpu"))
    assert dtype in (None, torch.bfloat16) and scaler is False


def test_bad_device_and_precision_are_clear_errors():
    with pytest.raises(UserError, match="fp16 is not supported on CPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(UserError, match="--precision fp8"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(UserError, match="--device tpu"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")
