"""Seconds of soft Dice forward+backward with and without a one-hot target (documentation/training.md, "Losses").

    python benchmarks/loss_one_hot_speed.py
"""
import time, torch, torch.nn.functional as F, statistics, tracemalloc
from autoseg.trainers.losses import SoftDiceLoss
torch.set_num_threads(2)
def old(logits, target):
    probs = torch.softmax(logits.float(), 1)
    onehot = F.one_hot(target[:, 0].long(), probs.shape[1]).movedim(-1, 1).float()
    probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = [0] + list(range(2, probs.ndim))
    tp = (probs * onehot).sum(axes); fp = (probs * (1 - onehot)).sum(axes); fn = ((1 - probs) * onehot).sum(axes)
    return 1 - ((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5)).mean()
new = SoftDiceLoss()
for k, shape in ((3, (4, 40, 56, 40)), (100, (2, 64, 64, 64))):
    logits = torch.randn(shape[0], k, *shape[1:], requires_grad=True); target = torch.randint(0, k, (shape[0], 1, *shape[1:]))
    ts = {"one-hot": [], "gather": []}
    for _ in range(5):
        for name, fn in (("one-hot", old), ("gather", new)):
            t = time.perf_counter(); fn(logits, target).backward(); ts[name].append(time.perf_counter() - t)
    print(k, shape, {n: round(statistics.median(v), 4) for n, v in ts.items()})
