import random

import numpy as np
import torch

from autoseg.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_checkpoint_roundtrip_weights_only(tmp_path):
    net = torch.nn.Conv3d(1, 2, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99, nesterov=True)
    net(torch.randn(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    state = {"network": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "rng": rng_state(),
             "log": {"epochs": [{"train_loss": 0.5, "val_loss": None, "pseudo_dice": [0.1, 0.2]}]}}
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no partial left behind
    loaded = torch.load(path, weights_only=True)  # what every reader of a checkpoint does
    assert loaded["epoch"] == 3 and loaded["log"]["epochs"][0]["pseudo_dice"] == [0.1, 0.2]
    net2 = torch.nn.Conv3d(1, 2, 3)
    net2.load_state_dict(loaded["network"])
    assert torch.equal(net2.weight, net.weight)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.99, nesterov=True)
    opt2.load_state_dict(load_checkpoint(path)["optimizer"])
    buf = opt2.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])


def test_rng_state_restores_all_generators(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in the legacy state
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and expected[3] == got[3]


class _Payload:
    """Unpickling this calls ``Path.touch`` on the marker: what a planted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_checkpoint_with_a_pickle_payload_is_refused_and_its_code_never_runs(tmp_path):
    import pytest

    from autoseg.errors import CheckpointError

    marker = tmp_path / "payload_ran"
    path = tmp_path / "checkpoint_final.pt"
    torch.save({"network": {}, "epoch": 1, "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused: the file holds objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()
    # the unsafe loader would have run it: the test's payload is real
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_and_foreign_checkpoints_get_one_line_errors(tmp_path):
    import pytest

    from autoseg.errors import CheckpointError

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"network": {"w": torch.zeros(1000)}, "epoch": 1})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="not an autoseg checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
