"""The training log: smoothed pseudo-Dice, the best epoch, a JSON round trip and the curve PNG."""
import math

from autoseg.trainers.progress import EMA_MOMENTUM, EpochRecord, ProgressLog, plot_progress


def record(epoch: int, dice: float | None, log: ProgressLog) -> EpochRecord:
    return EpochRecord(epoch=epoch, iterations=10 * (epoch + 1), train_loss=1.0 / (epoch + 1), val_loss=0.5,
                       pseudo_dice=[] if dice is None else [dice, dice], mean_pseudo_dice=dice,
                       smoothed_dice=log.smoothed(dice), lr=1e-2, epoch_time_s=1.0, iterations_per_s=10.0)


def test_smoothing_and_best_epoch():
    log = ProgressLog()
    assert log.add(record(0, 0.5, log)) and log.best_epoch == 0
    r1 = record(1, 0.9, log)
    assert math.isclose(r1.smoothed_dice, EMA_MOMENTUM * 0.5 + (1 - EMA_MOMENTUM) * 0.9)
    assert log.add(r1) and log.best_epoch == 1
    assert not log.add(record(2, 0.0, log)) and log.best_epoch == 1  # a bad epoch is not the best
    assert not log.add(record(3, None, log))  # no patch validation: no smoothed Dice
    assert log.smoothed(1.0) > log.records[2].smoothed_dice  # the EMA skips the epoch without one


def test_json_round_trip_and_curve(tmp_path):
    log = ProgressLog()
    for e, d in enumerate([0.2, 0.6, None, 0.7]):
        log.add(record(e, d, log))
    log.save(tmp_path / "log.json", {"trainer": "unet"})
    again = ProgressLog.load(tmp_path / "log.json")
    assert again == log
    plot_progress(log, tmp_path / "progress.png", ["inner", "outer"])
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
