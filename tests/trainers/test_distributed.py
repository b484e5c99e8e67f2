"""Training under torchrun: the context of one process, the collectives on two, and `autoseg train`
with DDP on CPU (gloo) end to end, resumed, and under a time budget."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.atomic import read_json
from autoseg.errors import UserError
from autoseg.trainers.distributed import RANK_SEED_STRIDE, DistributedContext, rank_batch_share
from autoseg.trainers.patch_sampler import PatchSampler
from tests.trainers.test_base import make_workspace

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- one process

def test_world_of_one_touches_nothing():
    ctx = DistributedContext.from_env({})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (0, 1, 0, 1)
    assert ctx.is_main and not ctx.is_distributed
    assert DistributedContext.from_env({"WORLD_SIZE": "1", "RANK": "0"}).world_size == 1  # torchrun with one process
    cpu = torch.device("cpu")
    assert ctx.start(cpu) is cpu
    counts = np.arange(6.0).reshape(3, 2)
    assert ctx.sum(counts) is counts
    assert ctx.mean(0.25) == 0.25 and ctx.all_true(False) is False and ctx.main_flag(True) is True
    box = {"total": 7}
    assert ctx.from_main(box) is box
    assert ctx.main_first(lambda: "made") == "made"
    net = nn.Linear(2, 2)
    assert ctx.wrap(net) is net
    ctx.barrier()
    ctx.close()
    assert ctx.rank_seed(5) == 5 and ctx.batch_share(2, 0.33) == (2, 0.33)
    assert not torch.distributed.is_initialized()


def test_from_env_reads_torchrun_and_rejects_nonsense():
    master = {"MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    ctx = DistributedContext.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                       **master})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (3, 4, 1, 2)
    assert not ctx.is_main and ctx.is_distributed
    assert ctx.rank_seed(5) == 5 + 3 * RANK_SEED_STRIDE
    with pytest.raises(UserError, match="WORLD_SIZE='two'"):
        DistributedContext.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(UserError, match="RANK=4"):
        DistributedContext.from_env({"WORLD_SIZE": "4", "RANK": "4", **master})
    with pytest.raises(UserError, match="MASTER_ADDR and MASTER_PORT not: start .* with torchrun"):
        DistributedContext.from_env({"WORLD_SIZE": "2", "RANK": "0"})


def _forced(per_rank: int, fraction: float) -> int:
    """How many patches a sampler of this batch size and fraction forces (PatchSampler's own rule)."""
    sampler = PatchSampler.__new__(PatchSampler)
    sampler.batch_size, sampler.oversample_foreground = per_rank, fraction
    return sampler.num_forced


@pytest.mark.parametrize("batch,world,osf", [(2, 2, 0.33), (2, 4, 0.33), (5, 2, 0.33), (12, 8, 0.33),
                                             (4, 2, 1.0), (4, 2, 0.0), (1, 1, 0.33)])
def test_rank_batch_share_keeps_the_global_batch_and_its_forced_patches(batch, world, osf):
    shares = [rank_batch_share(batch, osf, r, world) for r in range(world)]
    per_rank = {b for b, _ in shares}
    assert per_rank == {math.ceil(batch / world)}  # equal batches, together at least the plan's
    total = per_rank.pop() * world
    assert total >= batch
    # the ranks force as many patches as one sampler of the global batch would, in its last slots
    assert sum(_forced(b, f) for b, f in shares) == _forced(total, osf)
    assert [_forced(b, f) for b, f in shares] == sorted(_forced(b, f) for b, f in shares)
    if world == 2 and batch == 2:
        assert shares == [(1, 0.0), (1, 1.0)]


def test_trainer_with_a_step_of_its_own_is_refused_before_any_process_group(tmp_path, monkeypatch):
    from autoseg.trainers.registry import get_trainer
    from autoseg.trainers.base import TrainingSettings

    ws = make_workspace(tmp_path, num_cases=4)
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match="atlas_istn.*one process"):
        get_trainer("atlas_istn")(ws, "3d_fullres", 0, TrainingSettings(device="cpu"))
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------- two processes, in-process collectives

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    ctx = DistributedContext.from_env()
    assert ctx.start(torch.device("cpu")) == torch.device("cpu")
    marker = Path(out_dir) / "made_by"

    def make() -> str:
        if not marker.exists():
            marker.write_text(str(rank))
        return marker.read_text()

    result = {
        "sum": ctx.sum(np.array([rank + 1.0, 10.0])).tolist(),
        "mean": ctx.mean(float(rank)),
        "all_true": [ctx.all_true(rank == 0), ctx.all_true(True)],
        "main_flag": ctx.main_flag(rank == 0),
        "from_main": ctx.from_main({"rank": rank}),
        "main_first": ctx.main_first(make),
    }
    torch.manual_seed(rank)  # different weights on each rank: wrapping must give every rank rank 0's
    net = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    ddp = ctx.wrap(net)
    ddp(torch.full((4, 3), float(rank + 1))).sum().backward()
    optimizer.step()
    result["weights"] = [p.detach().flatten().tolist() for p in net.parameters()]
    del ddp  # as the trainer does: the wrapper goes before the process group
    ctx.close()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))


def test_collectives_and_ddp_on_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_collectives, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["sum"] == [3.0, 20.0] and r["mean"] == 0.5 and r["all_true"] == [False, True]
        assert r["main_flag"] is True and r["from_main"] == {"rank": 0} and r["main_first"] == "0"
    # one SGD step from rank 0's weights with the ranks' gradients averaged, as one process would take it
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    loss = (net(torch.full((4, 3), 1.0)).sum() + net(torch.full((4, 3), 2.0)).sum()) / 2
    loss.backward()
    expected = [(p - 0.1 * p.grad).detach().flatten().tolist() for p in net.parameters()]
    np.testing.assert_allclose(np.concatenate(r0["weights"]), np.concatenate(expected), rtol=1e-6)
    assert r0["weights"] == r1["weights"]


# ---------------------------------------------------------------- autoseg train under torchrun

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return root, make_workspace(root, num_cases=5)  # five folds: each test trains its own


def torchrun_train(root: Path, fold: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "autoseg", "train", "Tiny", "3d_fullres", str(fold), "--workspace", str(root / "ws"),
            "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu", "--num-workers", "0", *extra]


def env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def test_torchrun_trains_one_fold_as_one_process_would(workspace):
    root, ws = workspace
    r = subprocess.run(torchrun_train(root, 0, "--epochs", "2"), capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
                       env=env(), cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    fold = ws.fold_dir("unet", "3d_fullres", 0)
    assert (fold / "checkpoint_final.pt").is_file() and not (fold / "checkpoint_latest.pt").exists()
    assert r.stderr.count("epoch 0: train loss") == 1  # rank 0 alone logs (and writes)
    log = read_json(fold / "log.json")
    assert [e["iterations"] for e in log["epochs"]] == [2, 4]  # global steps, as in one process
    assert log["world_size"] == 2 and log["batch_size_per_rank"] == 1  # the plan's batch of 2 over 2 ranks
    done = read_json(fold / "done.json")
    assert done["iterations"] == 4 and done["validated"]
    assert read_json(fold / "validation" / "summary.json")["num_cases"] == 1
    state = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert state["iteration"] == 4 and not any(k.startswith("module.") for k in state["network"])
    assert not list(fold.glob(".partial-*"))


def test_torchrun_run_killed_mid_training_resumes_with_continue(workspace):
    root, ws = workspace
    fold = ws.fold_dir("unet", "3d_fullres", 1)
    args = torchrun_train(root, 1, "--epochs", "6", "--no-validation")  # an epoch writes for ~0.5 s
    log_file = root / "killed_run.txt"
    with open(log_file, "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env(), cwd=REPO)
        try:
            deadline = time.monotonic() + 90
            while not (fold / "checkpoint_latest.pt").is_file():
                assert proc.poll() is None, log_file.read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # torchrun passes SIGTERM on to its workers and waits for them
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    state = torch.load(fold / "checkpoint_latest.pt", weights_only=True)
    done = state["epoch"]
    assert 1 <= done < 6 and not (fold / "checkpoint_final.pt").exists()
    r = subprocess.run(args + ["--continue"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, env=env(), cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count(f"from checkpoint_latest.pt: epoch {done}, iteration {2 * done}/12") == 1
    log = read_json(fold / "log.json")
    assert [e["epoch"] for e in log["epochs"]] == list(range(6))
    assert [e["iterations"] for e in log["epochs"]] == [2, 4, 6, 8, 10, 12]
    final = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert final["iteration"] == 12 and read_json(fold / "done.json")["iterations"] == 12
    assert not (fold / "checkpoint_latest.pt").exists() and not list(fold.glob(".partial-*"))


def test_torchrun_time_budget_stops_every_rank_at_the_same_step(workspace):
    root, ws = workspace
    budget_min = 0.15
    # epochs far longer than the budget: the stop comes inside an epoch, rank 0's flag for all
    r = subprocess.run(torchrun_train(root, 2, "--epochs", "5", "--iters-per-epoch", "100000",
                                      "--time-budget", str(budget_min)),
                       capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120, env=env(), cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]  # a rank that stepped on alone would hang in DDP's all-reduce
    fold = ws.fold_dir("unet", "3d_fullres", 2)
    done = read_json(fold / "done.json")
    assert done["validated"] and done["elapsed_s"] < budget_min * 60 + 8  # slack: a loaded 2-core test machine
    log = read_json(fold / "log.json")
    assert 0 < log["epochs"][0]["iterations"] < 100000 and done["iterations"] == log["total_iterations"]
