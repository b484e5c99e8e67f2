"""Shared pieces of the autoseg-vs-nnU-Net v2 benchmarks.

Every benchmark script does the same few things: find the baseline's virtual environment
(made by ``benchmarks/setup_nnunet_env.sh``), lay a dataset out the way nnU-Net v2 wants it in a
scratch folder, run each tool's command as a subprocess while measuring wall time and the peak
memory of its whole process tree, and report the two side by side. This module holds those
pieces so each benchmark script only says what it runs.

Memory is measured by polling ``/proc`` every 0.1 s and summing over the command's process and
all its descendants, because both tools do their work in worker processes: the peak RSS of one
child (what ``getrusage(RUSAGE_CHILDREN)`` reports) would miss most of it. Two sums are kept:

- RSS: what ``top`` shows, summed. Pages shared between processes (the torch libraries that
  every worker maps, copy-on-write pages after ``fork``) count once per process.
- PSS: each shared page divided among the processes sharing it (``/proc/PID/smaps_rollup``), so
  the sum is what the tree really occupies. Use it when the two tools start workers differently.

Peaks shorter than the 0.1 s poll interval can be missed; both tools are measured the same way.

This module runs in autoseg's Python, never in the baseline's, and never imports nnunetv2.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
DEFAULT_NNUNET_VENV = Path(os.environ.get("NNUNET_VENV", Path.home() / ".cache" / "autoseg-bench" / "nnunet-venv"))
DEFAULT_SCRATCH = Path(os.environ.get("AUTOSEG_BENCH_SCRATCH", Path.home() / ".cache" / "autoseg-bench" / "scratch"))
NNUNET_TRAINERS_DIR = Path(__file__).resolve().parent / "nnunet_trainers"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchmarkError(RuntimeError):
    """Something the person running the benchmark must fix (missing environment, data, command)."""


# --------------------------------------------------------------------------- measuring a command


@dataclass
class RunResult:
    """One timed run of one tool's command; one JSON line in the results file."""

    benchmark: str
    tool: str  # "nnunet" or "autoseg"
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    peak_pss_bytes: int
    max_processes: int
    repeat: int = 0
    log_file: str = ""
    started_at: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` over all its threads (needs CONFIG_PROC_CHILDREN, standard on Linux)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return kids


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its live descendants."""
    seen: list[int] = []
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(_children(pid))
    return seen


def _rss_pss(pid: int) -> tuple[int, int]:
    """Resident and proportional set size of one process in bytes; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
        return rss, pss
    except OSError:
        pass
    try:  # kernels without smaps_rollup: RSS only, and PSS falls back to it
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE_SIZE
        return rss, rss
    except OSError:
        return 0, 0


class TreeMemoryMonitor:
    """Poll a process tree's summed RSS and PSS in a background thread; keep the peaks."""

    def __init__(self, root_pid: int, interval_s: float = 0.1, limit_bytes: int | None = None) -> None:
        self.root_pid = root_pid
        self.interval_s = interval_s
        # a tree whose RSS passes the limit is killed (its process group): out of memory, recorded
        self.limit_bytes = limit_bytes
        self.out_of_memory = False
        self.peak_rss = 0
        self.peak_pss = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> tuple[int, int, int]:
        pids = process_tree(self.root_pid)
        rss = pss = 0
        for pid in pids:
            r, p = _rss_pss(pid)
            rss += r
            pss += p
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.max_processes = max(self.max_processes, len(pids))
        return rss, pss, len(pids)

    # Reading smaps_rollup walks a process's page tables: at 10 Hz on a 1 GB process tree the
    # monitor itself took 12-27% of a core during a 20-minute training benchmark. Short commands
    # keep the fine interval; after the first 10 s it relaxes to at most once a second, which
    # still catches the plateaus that make a long run's peak.
    relaxed_after_s = 10.0
    relaxed_interval_s = 1.0

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            rss, _, _ = self.sample()
            if self.limit_bytes is not None and rss > self.limit_bytes and not self.out_of_memory:
                self.out_of_memory = True
                try:
                    os.killpg(self.root_pid, signal.SIGKILL)
                except OSError:
                    pass
            interval = self.interval_s
            if time.monotonic() - start > self.relaxed_after_s:
                # a memory limit needs closer watching than a peak does
                interval = max(interval, self.relaxed_interval_s if self.limit_bytes is None else 0.25)
            self._stop.wait(interval)

    def __enter__(self) -> "TreeMemoryMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(
    command: Sequence[str],
    *,
    benchmark: str,
    tool: str,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
    timeout_s: float | None = None,
    repeat: int = 0,
    poll_interval_s: float = 0.1,
    memory_limit_bytes: int | None = None,
) -> RunResult:
    """Run ``command``, measuring wall time and the peak memory of its whole process tree.

    stdout and stderr go to ``log_file`` (not the terminal, so progress bars cost both tools the
    same and the benchmark's own output stays readable). On timeout the whole process group is
    killed and ``returncode`` is -9. Past ``memory_limit_bytes`` (the tree's RSS) it is killed too,
    and ``extra["out_of_memory"]`` says so; so does a log that ends in a MemoryError or an
    allocation failure (an allocation larger than the machine fails at once).
    """
    command = [str(c) for c in command]
    log_path = Path(log_file) if log_file else None
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        t0 = time.perf_counter()
        # A session of its own, so a timeout can kill workers that outlive their parent.
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        with TreeMemoryMonitor(proc.pid, poll_interval_s, memory_limit_bytes) as monitor:
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                returncode = -9
        wall = time.perf_counter() - t0
    finally:
        if log_path:
            out.close()
    extra = {}
    if monitor.out_of_memory or (returncode != 0 and log_path and _ran_out_of_memory(log_path)):
        extra["out_of_memory"] = True
    return RunResult(
        benchmark=benchmark, tool=tool, command=command, returncode=returncode, wall_s=round(wall, 3),
        peak_rss_bytes=monitor.peak_rss, peak_pss_bytes=monitor.peak_pss,
        max_processes=monitor.max_processes, repeat=repeat,
        log_file=str(log_path) if log_path else "", started_at=started_at, extra=extra,
    )


def _ran_out_of_memory(log_path: Path) -> bool:
    text = tail(log_path, 60)
    return any(s in text for s in ("MemoryError", "Unable to allocate", "DefaultCPUAllocator: can't allocate",
                                   "not enough memory"))


def tail(path: str | os.PathLike, n: int = 25) -> str:
    """Last ``n`` lines of a log file, to show why a command failed."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- the nnU-Net baseline


def nnunet_venv(explicit: str | os.PathLike | None = None) -> Path:
    """The baseline's virtual environment; raises BenchmarkError if it is not set up."""
    venv = Path(explicit).expanduser() if explicit else DEFAULT_NNUNET_VENV
    if not (venv / "bin" / "nnUNetv2_plan_and_preprocess").exists():
        raise BenchmarkError(
            f"no nnU-Net v2 environment at {venv}: run benchmarks/setup_nnunet_env.sh "
            f"(or pass --nnunet-venv / set NNUNET_VENV)")
    return venv


def nnunet_command(venv: Path, name: str) -> Path:
    """Path of one of nnU-Net's console scripts (nnUNetv2_*) in the baseline environment."""
    exe = venv / "bin" / name
    if not exe.exists():
        raise BenchmarkError(f"{exe} does not exist: is {venv} an nnU-Net v2 environment?")
    return exe


@dataclass(frozen=True)
class NnunetFolders:
    """nnU-Net's three folders, all inside one benchmark scratch folder."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, scratch: Path) -> "NnunetFolders":
        root = scratch / "nnunet"
        return cls(root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results")

    def make(self) -> "NnunetFolders":
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)
        return self


def nnunet_env(folders: NnunetFolders, venv: Path, extra: dict[str, str] | None = None,
               extra_trainers: bool = False) -> dict[str, str]:
    """Environment for the baseline's subprocesses only: the current one plus nnU-Net's variables.

    The benchmark's own process is left untouched, so autoseg never sees nnU-Net's variables.
    ``extra_trainers`` registers ``benchmarks/nnunet_trainers`` through ``nnUNet_extTrainer``.
    """
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(folders.raw),
        "nnUNet_preprocessed": str(folders.preprocessed),
        "nnUNet_results": str(folders.results),
        # the venv's console scripts find their own interpreter via the shebang; PATH matters
        # only for anything they start by name
        "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
    })
    env.pop("PYTHONPATH", None)  # never let the project's paths leak into the baseline
    if extra_trainers:
        env["nnUNet_extTrainer"] = str(NNUNET_TRAINERS_DIR)
    if extra:
        env.update(extra)
    return env


def nnunet_dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def _msd_name(msd_dir: Path, meta: dict) -> str:
    """MSD folders are called TaskNN_Name; nnU-Net wants just Name (no spaces)."""
    name = meta.get("name") or msd_dir.name
    if msd_dir.name.startswith("Task") and "_" in msd_dir.name:
        name = msd_dir.name.split("_", 1)[1]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def convert_msd_to_nnunet(msd_dir: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int,
                          name: str | None = None) -> Path:
    """Lay an MSD-style dataset (imagesTr/, labelsTr/, dataset.json) out as nnU-Net v2 raw data.

    Single-channel images are linked, not copied (``CASE_0000.nii.gz`` -> the original file), so
    both tools read the very same bytes from disk; multi-channel 4D NIfTI files are split into one
    file per channel with SimpleITK, as ``nnUNetv2_convert_MSD_dataset`` does. An existing
    conversion with the same cases is reused. Returns the ``DatasetNNN_Name`` folder.
    """
    msd_dir = Path(msd_dir).resolve()
    meta_file = msd_dir / "dataset.json"
    if not meta_file.is_file():
        raise BenchmarkError(f"{meta_file} not found: is {msd_dir} an MSD-style dataset folder?")
    meta = json.loads(meta_file.read_text())
    modality = meta.get("modality") or meta.get("channel_names")
    if not modality or "training" not in meta:
        raise BenchmarkError(f"{meta_file}: expected MSD keys 'modality' and 'training'")
    channel_names = {str(k): v for k, v in sorted(modality.items(), key=lambda kv: int(kv[0]))}
    labels = {v: int(k) for k, v in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))}
    labels = {("background" if value == 0 else label): value for label, value in labels.items()}
    cases = []
    for entry in meta["training"]:
        image = (msd_dir / entry["image"]).resolve()
        label = (msd_dir / entry["label"]).resolve()
        if not image.name.endswith(".nii.gz"):
            raise BenchmarkError(f"{image}: only .nii.gz MSD datasets are converted here")
        cases.append((image.name[: -len(".nii.gz")], image, label))

    target = Path(raw_root) / nnunet_dataset_name(dataset_id, name or _msd_name(msd_dir, meta))
    dataset_json = {
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": target.name,
        "converted_from": str(msd_dir),
    }
    done_file = target / "dataset.json"
    if done_file.is_file() and json.loads(done_file.read_text()) == dataset_json:
        return target
    if target.exists():
        shutil.rmtree(target)
    images_tr, labels_tr = target / "imagesTr", target / "labelsTr"
    images_tr.mkdir(parents=True)
    labels_tr.mkdir(parents=True)
    for case_id, image, label in cases:
        if not image.is_file() or not label.is_file():
            raise BenchmarkError(f"case {case_id}: {image} or {label} is missing")
        if len(channel_names) == 1:
            os.symlink(image, images_tr / f"{case_id}_0000.nii.gz")
        else:
            import SimpleITK as sitk

            img = sitk.ReadImage(str(image))
            for c in range(len(channel_names)):
                sitk.WriteImage(img[:, :, :, c], str(images_tr / f"{case_id}_{c:04d}.nii.gz"))
        os.symlink(label, labels_tr / f"{case_id}.nii.gz")
    # dataset.json last: its presence marks a complete conversion
    tmp = target / ".dataset.json.partial"
    tmp.write_text(json.dumps(dataset_json, indent=2) + "\n")
    os.replace(tmp, done_file)
    return target


# --------------------------------------------------------------------------- fairness helpers


def warm_page_cache(folder: str | os.PathLike) -> int:
    """Read every file under ``folder`` once so neither tool pays for a cold disk; returns bytes read."""
    total = 0
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
    return total


def remove_tree(path: str | os.PathLike) -> None:
    """Delete an output folder so the next run cannot skip work it finds already done."""
    shutil.rmtree(path, ignore_errors=True)
    if Path(path).exists():
        raise BenchmarkError(f"could not delete {path}")


def folder_summary(path: str | os.PathLike) -> dict:
    """Files and bytes under ``path``, per first-level subfolder: shows what each tool produced."""
    path = Path(path)
    summary: dict[str, dict[str, int]] = {}
    if not path.is_dir():
        return summary
    for p in path.rglob("*"):
        if p.is_file():
            rel = p.relative_to(path).parts
            key = rel[0] if len(rel) > 1 else "."
            s = summary.setdefault(key, {"files": 0, "bytes": 0})
            s["files"] += 1
            s["bytes"] += p.stat().st_size
    return dict(sorted(summary.items()))


def machine_info() -> dict:
    """What the figures depend on: cores, memory, Python, and torch in each environment."""
    info = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/loadavg") as f:
            info["loadavg_1min_before"] = float(f.read().split()[0])
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- results


def append_result(results_file: str | os.PathLike, result: RunResult, **context) -> None:
    """Append one run as a JSON line (``context`` adds fields such as dataset or workers)."""
    record = asdict(result) | context
    path = Path(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one write of one line: a killed benchmark leaves at most a missing line, never half a record
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_results(results_file: str | os.PathLike) -> list[dict]:
    path = Path(results_file)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "n/a"


def median_of(results: Iterable[RunResult], attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if r.ok]
    return statistics.median(values) if values else None


def comparison_table(rows: Sequence[tuple[str, Sequence[RunResult], Sequence[RunResult]]]) -> str:
    """Markdown table, one row per step: medians of successful repeats and autoseg / nnU-Net ratios.

    ``rows`` holds ``(step, nnunet_runs, autoseg_runs)``; a side with no successful run shows
    "failed" and its ratios "n/a".
    """
    lines = [
        "| step | runs | nnU-Net v2 wall | autoseg wall | wall ratio | nnU-Net v2 peak RSS | autoseg peak RSS "
        "| RSS ratio | nnU-Net v2 peak PSS | autoseg peak PSS | PSS ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for step, nn_runs, as_runs in rows:
        cells = [step, f"{sum(r.ok for r in nn_runs)} / {sum(r.ok for r in as_runs)}"]
        med = {}
        for side, runs in (("nn", nn_runs), ("as", as_runs)):
            for attr in ("wall_s", "peak_rss_bytes", "peak_pss_bytes"):
                med[side, attr] = median_of(runs, attr)

        def cell(side: str, attr: str) -> str:
            v = med[side, attr]
            if v is None:
                return "failed" if (nn_runs if side == "nn" else as_runs) else "not run"
            return f"{v:.1f} s" if attr == "wall_s" else _gb(v)

        for attr in ("wall_s", "peak_rss_bytes", "peak_pss_bytes"):
            cells += [cell("nn", attr), cell("as", attr), _ratio(med["as", attr], med["nn", attr])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- training/prediction setup
#
# Shared by bench_train_dice.py, bench_train_throughput.py and bench_predict.py: both tools'
# preprocessed data (made once per scratch folder, not timed), the fold's cases taken from
# autoseg's splits and handed to nnU-Net, and scoring any folder of predictions with autoseg's
# own metric code.


def dataset_id_for(data: Path, explicit: int | None = None) -> int:
    """nnU-Net dataset id: ``explicit``, else NN of a ``TaskNN_`` folder name, else 999."""
    import re

    if explicit is not None:
        return explicit
    match = re.match(r"Task(\d+)_", Path(data).name)
    return int(match.group(1)) if match else 999


def _run_setup(command: Sequence, log: Path, env: dict[str, str] | None = None, what: str = "") -> None:
    """Run an untimed preparation command; raise BenchmarkError with the log's tail if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        rc = subprocess.run([str(c) for c in command], env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise BenchmarkError(f"{what or command[0]} failed (exit {rc}), log {log}:\n{tail(log)}")


def autoseg_case_ids(dataset_ws: Path, data_identifier: str) -> list[str]:
    """Preprocessed case ids, found exactly as ``autoseg train`` finds them."""
    from autoseg.preprocessing.preprocessed import PreprocessedFolder

    return PreprocessedFolder(dataset_ws / "preprocessed" / data_identifier).case_ids()


def prepare_autoseg(data: Path, workspace: Path, workers: int, logs: Path) -> Path:
    """``autoseg plan-and-preprocess`` into ``workspace``; returns the dataset folder.

    Always run: it re-plans with the code under test (a plans.json left by an older version
    would train the old plan) and resumes the preprocessing, skipping cases already done.
    """
    _run_setup([sys.executable, "-m", "autoseg", "plan-and-preprocess", data, "--workspace", workspace,
                "-np", workers], logs / "autoseg_plan_and_preprocess.log", what="autoseg plan-and-preprocess")
    return workspace / data.name


def autoseg_splits(dataset_ws: Path, configuration: str = "3d_fullres") -> list[dict[str, list[str]]]:
    """autoseg's five folds, made (and written to splits.json) exactly as ``autoseg train`` makes them."""
    from autoseg.trainers.splits import load_or_create_splits
    from autoseg.workspace import DatasetWorkspace

    ws = DatasetWorkspace(dataset_ws)
    config = json.loads(ws.plans_file.read_text())["configurations"][configuration]
    return load_or_create_splits(ws, autoseg_case_ids(dataset_ws, config["data_identifier"]))


def prepare_nnunet(venv: Path, folders: NnunetFolders, data: Path, dataset_id: int, workers: int,
                   logs: Path) -> Path:
    """nnU-Net raw copy + ``nnUNetv2_plan_and_preprocess -c 3d_fullres`` unless already done.

    Returns nnU-Net's preprocessed dataset folder.
    """
    raw = convert_msd_to_nnunet(data, folders.raw, dataset_id)
    pre = folders.preprocessed / raw.name
    n_cases = len(json.loads((data / "dataset.json").read_text())["training"])
    done = (pre / "nnUNetPlans.json").is_file() and (pre / "nnUNetPlans_3d_fullres").is_dir() and \
        len([p for p in (pre / "nnUNetPlans_3d_fullres").glob("*.pkl")]) >= n_cases
    if not done:
        _run_setup([nnunet_command(venv, "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", "3d_fullres",
                    "-np", workers, "-npfp", workers], logs / "nnunet_plan_and_preprocess.log",
                   env=nnunet_env(folders, venv), what="nnUNetv2_plan_and_preprocess")
    return pre


def write_nnunet_splits(splits: list[dict[str, list[str]]], nnunet_preprocessed_dataset: Path) -> Path:
    """autoseg's folds as nnU-Net's ``splits_final.json``, which nnU-Net's trainer reads instead of splitting."""
    from autoseg.atomic import write_json

    target = Path(nnunet_preprocessed_dataset) / "splits_final.json"
    write_json(target, [{"train": list(s["train"]), "val": list(s["val"])} for s in splits])
    return target


def link_cases(src_folder: Path, case_ids: Iterable[str], dest: Path, ending: str = ".nii.gz",
               suffix: str = "") -> list[str]:
    """Symlink ``CASE<ending>`` of each case from ``src_folder`` into a fresh ``dest`` as
    ``CASE<suffix><ending>``; returns the cases that were missing in ``src_folder``."""
    remove_tree(dest)
    dest.mkdir(parents=True)
    missing = []
    for cid in case_ids:
        src = Path(src_folder) / f"{cid}{ending}"
        if src.is_file():
            os.symlink(src.resolve(), dest / f"{cid}{suffix}{ending}")
        else:
            missing.append(cid)
    return missing


def score_predictions(reference_labels: Path, predictions: Path, case_ids: Sequence[str], work: Path,
                      ending: str = ".nii.gz") -> dict:
    """Mean foreground Dice of ``predictions`` for ``case_ids``, by ``autoseg evaluate`` (same code for both tools).

    The reference folder usually holds every case (a dataset's labelsTr), so the cases' reference
    and prediction files are linked into folders of their own first. A case without prediction
    counts as missing (reported), not silently dropped.
    """
    ref_dir, pred_dir, out_dir = work / "reference", work / "prediction", work / "evaluation"
    missing_ref = link_cases(reference_labels, case_ids, ref_dir, ending)
    if missing_ref:
        raise BenchmarkError(f"{reference_labels}: no reference for {len(missing_ref)} case(s), e.g. {missing_ref[0]}")
    missing = link_cases(predictions, case_ids, pred_dir, ending)
    remove_tree(out_dir)
    _run_setup([sys.executable, "-m", "autoseg", "evaluate", ref_dir, pred_dir, "-o", out_dir,
                "--file-ending", ending], work / "evaluate.log", what="autoseg evaluate")
    summary = json.loads((out_dir / "summary.json").read_text())
    return {
        "mean_foreground_dice": summary["foreground_mean"]["Dice"],
        "per_class_dice": {k: v["Dice"] for k, v in summary["mean"].items()},
        "num_cases": summary["num_cases"],
        "missing_predictions": sorted(set(missing) | set(summary.get("missing_predictions") or [])),
        "summary_file": str(out_dir / "summary.json"),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def dataset_folder(path: Path) -> Path | None:
    """The resolved ``--data`` folder, or None (after printing why) when it has no dataset.json."""
    data = Path(path).expanduser().resolve()
    if not (data / "dataset.json").is_file():
        print(f"error: {data}/dataset.json not found; pass --data DATASET_FOLDER", file=sys.stderr)
        return None
    return data


def scratch_folder(explicit: Path | None, benchmark: str, data: Path) -> Path:
    """``--scratch`` if given, else ``DEFAULT_SCRATCH/<benchmark>_<dataset>``."""
    return (explicit or DEFAULT_SCRATCH / f"{benchmark}_{data.name}").expanduser().resolve()
