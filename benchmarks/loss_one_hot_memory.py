"""Peak memory of soft Dice with and without a one-hot target, 100 classes (documentation/training.md, "Losses").

    python benchmarks/loss_one_hot_memory.py old; python benchmarks/loss_one_hot_memory.py new
"""
import sys, resource, torch, torch.nn.functional as F

from autoseg.trainers.losses import SoftDiceLoss
torch.set_num_threads(2)
k, shape = 100, (2, 64, 64, 64)
torch.manual_seed(0)
logits = torch.randn(shape[0], k, *shape[1:], requires_grad=True); target = torch.randint(0, k, (shape[0], 1, *shape[1:]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "old":
    probs = torch.softmax(logits.float(), 1)
    onehot = F.one_hot(target[:, 0].long(), k).movedim(-1, 1).float()
    probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = [0, 2, 3, 4]
    tp = (probs * onehot).sum(axes); fp = (probs * (1 - onehot)).sum(axes); fn = ((1 - probs) * onehot).sum(axes)
    loss = 1 - ((2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5)).mean()
else:
    loss = SoftDiceLoss()(logits, target)
loss.backward()
print(sys.argv[1], "peak increase MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
