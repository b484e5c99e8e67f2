"""ONNX export of a trained model's folds, and prediction through onnxruntime.

:func:`export_onnx` writes each fold's network as ``fold_<k>.onnx`` with dynamic batch and
spatial axes, a sidecar ``fold_<k>.json`` (:class:`OnnxFold`, written last: its presence marks
the fold exported) and a copy of the model's ``plans.json``, so the folder is self-contained.
Every file is checked after export: onnxruntime and torch run the same random batches at the
traced size and at a second size, and a fold whose logits differ is refused, so a network
whose export froze a shape or lost an operation never predicts silently wrong. A network whose
graph cannot take other sizes is exported again with the inference patch's fixed size, the
only size the sliding window sends.

:class:`OnnxNetwork` is an ``nn.Module`` whose forward runs an onnxruntime session, so the
same :class:`~autoseg.inference.predictor.Predictor`, sliding window, test-time mirroring,
fold averaging, ensembling and export to the original geometry serve both engines:
:func:`onnx_predictor` builds one from an exported folder, :func:`onnx_predictor_from_model_folder`
from a trained model folder (exporting what is missing or stale into ``<model folder>/onnx``).

onnxruntime and onnx are an optional extra (``pip install -e ".[onnx]"``); without them only
these functions fail, with a message that says what to install.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import io
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

import torch
from torch import nn

from autoseg.atomic import atomic_path, read_json, write_json
from autoseg.device import resolve_device
from autoseg.errors import UserError
from autoseg.typed_json import from_json

if TYPE_CHECKING:
    from autoseg.inference.predictor import Predictor

ONNX_FORMAT = 1
DEFAULT_OPSET = 18  # both exporters support it; the dynamo exporter needs at least 18
ONNX_FOLDER = "onnx"  # inside a model folder: where predict --engine onnxruntime keeps its export
EXPORTERS = ("auto", "dynamo", "torchscript")
INSTALL_HINT = 'pip install -e ".[onnx]" (onnx, onnxruntime, onnxscript)'
# logits of the two engines may differ by float reassociation (fused convolutions, other kernels)
VERIFY_ATOL = 1e-3


class OnnxEngineError(UserError):
    """An ONNX export or an onnxruntime model cannot be used; the message names the file or fold."""


@dataclass
class OnnxFold:
    """``fold_<k>.json``: what was exported, from which checkpoint, and how it checked out."""

    format: int
    fold: str
    model: str  # the model folder's name, <trainer>__<configuration>
    configuration: str
    architecture: str
    checkpoint: str  # final, best or latest
    checkpoint_sha256: str  # the exported checkpoint's: a retrained fold's export is stale
    exporter: str
    opset: int
    torch_version: str
    input_name: str
    output_name: str
    in_channels: int  # channels x context slices: what the network itself takes
    num_classes: int
    context_slices: int  # 2.5D networks see neighbouring slices as channels (sliding_window builds them)
    dim: int
    dynamic_spatial: bool  # False for networks with a fixed input grid (ViT patch embeddings)
    traced_shape: list[int]
    mirror_axes: list[int] | None  # the axes the fold was trained mirrored on; None: the plan's
    verified_shapes: list[list[int]]
    max_abs_diff: float | None  # onnxruntime vs torch logits on those shapes; None: not checked

    @property
    def onnx_name(self) -> str:
        return f"fold_{self.fold}.onnx"

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "OnnxFold":
        try:
            data = read_json(path)
        except ValueError as e:
            raise OnnxEngineError(f"{path}: not JSON ({e})") from None
        record = from_json(cls, data, str(path))
        if record.format != ONNX_FORMAT:
            raise OnnxEngineError(f"{path}: ONNX export format {record.format} is not supported "
                                  f"(expected {ONNX_FORMAT}); export again with 'autoseg export-onnx'")
        return record


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxEngineError(f"the ONNX engine needs the '{module}' package, which is not installed: "
                              f"{INSTALL_HINT}") from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ onnxruntime as a torch module


def onnx_providers(device: torch.device) -> list[str]:
    """The execution providers for ``device``: CUDA (then CPU) where this onnxruntime has it."""
    ort = _require("onnxruntime")
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise OnnxEngineError("--device cuda with --engine onnxruntime: this onnxruntime has no CUDA provider "
                                  "(pip install onnxruntime-gpu), or predict on the CPU")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.type != "cpu":
        raise OnnxEngineError(f"--device {device.type} with --engine onnxruntime: choose cpu or cuda")
    return ["CPUExecutionProvider"]


def engine_device(name: str | torch.device = "auto") -> torch.device:
    """The device onnxruntime runs on: ``auto`` is CUDA only where both torch and onnxruntime have it,
    so the sliding window's tensors stay where the session computes."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        ort = _require("onnxruntime")
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            return torch.device("cuda")
        return torch.device("cpu")
    return resolve_device(name)


class OnnxNetwork(nn.Module):
    """One exported fold behind the interface of an autoseg network in eval mode: ``(N, C, *spatial)``
    float tensor in, logits tensor out, on the input's device. It has no parameters; ``.to()`` and
    ``.eval()`` are no-ops, so the Predictor and the sliding window use it unchanged."""

    def __init__(self, onnx_file: str | os.PathLike, record: OnnxFold, device: str | torch.device = "cpu",
                 num_threads: int | None = None) -> None:
        super().__init__()
        ort = _require("onnxruntime")
        self.onnx_file = Path(onnx_file)
        self.record = record
        self.context_slices = int(record.context_slices)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        try:
            self.session = ort.InferenceSession(str(self.onnx_file), options,
                                                providers=onnx_providers(engine_device(device)))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise OnnxEngineError(f"{self.onnx_file}: onnxruntime cannot load it ({type(e).__name__}: "
                                  f"{str(e)[:300]}); export it again with 'autoseg export-onnx'") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.record.dim + 2 or x.shape[1] != self.record.in_channels:
            raise ValueError(f"{self.onnx_file}: expected (N, {self.record.in_channels}, {self.record.dim} spatial "
                             f"axes), got {tuple(x.shape)}")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(logits).to(x.device)

    def extra_repr(self) -> str:
        return f"{self.onnx_file.name}, providers={self.session.get_providers()}"


# ------------------------------------------------------------------ export


def _fixed_grid(architecture: str) -> bool:
    """Whether the architecture's input grid is fixed (it is built with the patch size)."""
    from autoseg.networks import ARCHITECTURES
    from autoseg.plugins import load_plugin

    cls = load_plugin(architecture, "architecture", nn.Module, ARCHITECTURES)
    return "patch_size" in inspect.signature(cls).parameters


def _network_stride(network: nn.Module, topology: Any, dim: int) -> list[int]:
    stride = getattr(network, "total_stride", None)
    if stride is None:
        from autoseg.networks import total_stride

        stride = total_stride(topology)
    return [int(s) for s in list(stride)[-dim:]]


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print progress, graphs and warnings (a missing torchvision, the tracer's view
    of the network's Python-side input check, a whole TorchScript graph from C++ on failure) that
    say nothing to a user; failures still raise, with their message."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.stdout.flush()
    saved = None
    try:
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:  # no file descriptor 1 (some embedded interpreters): stay noisy
        saved = None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _export_file(network: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str,
                 dynamic_spatial: bool, stride: Sequence[int]) -> None:
    dim = example.ndim - 2
    with atomic_path(path) as tmp, _quiet_exporter():
        if exporter == "torchscript":
            axes = {0: "batch"}
            if dynamic_spatial:
                axes.update({2 + i: f"spatial_{i}" for i in range(dim)})
            torch.onnx.export(network, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes}, opset_version=opset, dynamo=False)
        else:
            from torch.export import Dim

            shapes: dict[int, Any] = {0: Dim("batch")}
            if dynamic_spatial:
                # sizes are multiples of the total stride, which is what the network's input check asks
                shapes.update({2 + i: s * Dim(f"spatial_{i}") if s > 1 else Dim(f"spatial_{i}")
                               for i, s in enumerate(stride)})
            param = next(iter(inspect.signature(network.forward).parameters))
            torch.onnx.export(network, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                              dynamic_shapes={param: shapes}, opset_version=opset, dynamo=True, verbose=False)


def _exporters(requested: str, opset: int) -> list[str]:
    """The exporters to try in order. ``auto``: torch.export's (dynamo) where onnxscript is
    installed and the opset allows, then the TorchScript tracer for what dynamo cannot export."""
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if requested == "dynamo":
        if not has_onnxscript:
            raise OnnxEngineError("--exporter dynamo needs the 'onnxscript' package, which is not installed: "
                                  f"{INSTALL_HINT}; or use --exporter torchscript")
        return ["dynamo"]
    if requested == "torchscript":
        return ["torchscript"]
    return (["dynamo"] if has_onnxscript and opset >= 18 else []) + ["torchscript"]


def _verify(network: nn.Module, onnx_file: Path, record: OnnxFold, shapes: list[list[int]]) -> float:
    """Largest |onnxruntime - torch| logit over random inputs of ``shapes``; refuses a fold beyond tolerance.

    Batches of 3 and 1 around the traced batch of 2: the sliding window sends any batch size,
    and a size an exporter froze into the graph shows up here rather than as a failed prediction."""
    onnx_net = OnnxNetwork(onnx_file, record, device="cpu")
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for i, shape in enumerate(shapes):
        x = torch.randn([3 if i % 2 == 0 else 1, record.in_channels] + list(shape), generator=generator)
        with torch.inference_mode():
            reference = network(x)
            if isinstance(reference, (list, tuple)):
                reference = reference[0]
            try:
                got = onnx_net(x)
            except Exception as e:  # onnxruntime's errors when the graph froze a size
                raise OnnxEngineError(f"{onnx_file}: onnxruntime cannot run the export on a batch of "
                                      f"{tuple(x.shape)}: the exporter froze an input size ({type(e).__name__}: "
                                      f"{(str(e).strip().splitlines() or [''])[0][:300]})") from None
        if tuple(got.shape) != tuple(reference.shape):
            raise OnnxEngineError(f"{onnx_file}: output shape {tuple(got.shape)} on input {shape} differs from "
                                  f"torch's {tuple(reference.shape)}")
        diff = float((got.float() - reference.float()).abs().max())
        scale = float(reference.abs().max())
        if not diff <= VERIFY_ATOL * max(1.0, scale):
            raise OnnxEngineError(f"{onnx_file}: onnxruntime's logits differ from torch's by {diff:.3g} (logits up to "
                                  f"{scale:.3g}) on input size {shape}")
        worst = max(worst, diff)
    return worst


def _export_fold(network: nn.Module, record: OnnxFold, onnx_file: Path, exporters: list[str], stride: list[int],
                 verify: bool, what: str) -> None:
    """Export one fold into ``onnx_file``, filling ``record``: each exporter with dynamic spatial
    sizes, then each with the inference patch's fixed sizes (the sliding window sends only that
    size; a network whose graph freezes a size, such as a window attention's reshapes, still
    exports), until one exports and passes the check."""
    patch = list(record.traced_shape)
    # a batch of 2: torch.export fixes dimensions of size 1 in the graph, the batch included
    example = torch.randn([2, record.in_channels] + patch, generator=torch.Generator().manual_seed(0))
    failures = []
    for dynamic in ([True, False] if record.dynamic_spatial else [False]):
        shapes = [patch, [p + s for p, s in zip(patch, stride)] if dynamic else patch]
        for name in exporters:
            record.exporter, record.dynamic_spatial = name, dynamic
            label = f"{name}{'' if dynamic else ', fixed size'}"
            try:
                _export_file(network, example, onnx_file, record.opset, name, dynamic, stride)
            except Exception as e:  # the exporters raise many types for an operation they cannot translate
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                failures.append(f"{label}: {type(e).__name__}: {first[:300]}")
                continue
            if not verify:
                return
            try:
                record.max_abs_diff = _verify(network, onnx_file, record, shapes)
            except OnnxEngineError as e:
                failures.append(f"{label}: {e}")
                continue
            record.verified_shapes = shapes
            return
    onnx_file.unlink(missing_ok=True)
    raise OnnxEngineError(f"{what}: architecture '{record.architecture}' does not export to ONNX "
                          f"({'; '.join(failures)}); predict with the torch engine")


def export_onnx(model_folder: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                folds: Iterable[int | str] | str = (0, 1, 2, 3, 4), opset: int = DEFAULT_OPSET,
                checkpoint: str = "final", exporter: Literal["auto", "dynamo", "torchscript"] = "auto",
                verify: bool = True, progress: bool = True) -> list[OnnxFold]:
    """Export each fold of ``model_folder`` (``results/<trainer>__<configuration>``) to
    ``out_dir/fold_<k>.onnx`` + ``fold_<k>.json``, with ``plans.json`` beside them; default
    ``out_dir``: ``<model_folder>/onnx``. Returns the folds' records.

    ``exporter``: ``dynamo`` (``torch.export``-based, torch's supported exporter; needs
    ``onnxscript``; seconds per fold), ``torchscript`` (the older tracer, deprecated by torch but
    about ten times faster and without onnxscript) or ``auto`` (dynamo, then torchscript for a
    network dynamo cannot export). ``verify`` runs each file on onnxruntime against torch (needs
    onnxruntime).
    """
    from tqdm import tqdm

    from autoseg.inference.predictor import Predictor, fold_names

    if exporter not in EXPORTERS:
        raise OnnxEngineError(f"exporter '{exporter}': choose {', '.join(EXPORTERS)}")
    if not 7 <= int(opset) <= 23:
        raise OnnxEngineError(f"opset {opset}: choose an ONNX opset between 7 and 23 (default {DEFAULT_OPSET})")
    if exporter == "dynamo" and opset < 18:
        raise OnnxEngineError(f"opset {opset}: the dynamo exporter needs opset 18 or later")
    _require("onnx")
    if verify:
        _require("onnxruntime")
    candidates = _exporters(exporter, int(opset))
    model_folder = Path(model_folder)
    out = Path(out_dir) if out_dir is not None else model_folder / ONNX_FOLDER
    names = fold_names(folds)
    # every fold loads (and every checkpoint is checked) before anything is written
    loaded = [(f, Predictor.from_model_folder(model_folder, folds=[f], checkpoint=checkpoint, device="cpu",
                                              tta=False, precision="fp32")) for f in names]
    plans = loaded[0][1].plans
    plans.save(out / "plans.json")
    records = []
    for fold, predictor in tqdm(loaded, desc=f"ONNX export {model_folder.name}", disable=not progress, leave=False):
        network = predictor.networks[0].cpu().eval()
        config = predictor.config
        context = int(getattr(network, "context_slices", 1))
        in_channels = len(plans.channel_names) * context
        patch = [int(p) for p in config.inference_patch]
        dynamic = not _fixed_grid(config.architecture)
        stride = _network_stride(network, config.network, config.dim)
        ckpt = model_folder / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"
        record = OnnxFold(ONNX_FORMAT, fold, model_folder.name, predictor.configuration, config.architecture,
                          checkpoint, file_sha256(ckpt), candidates[0], int(opset), torch.__version__, "image", "logits",
                          in_channels, plans.num_classes, context, config.dim, dynamic, patch,
                          None if predictor.mirror_axes is None else [int(a) for a in predictor.mirror_axes],
                          [], None)
        sidecar = out / f"fold_{fold}.json"
        sidecar.unlink(missing_ok=True)  # an earlier export's record must not vouch for the new file
        _export_fold(network, record, out / record.onnx_name, candidates, stride, verify,
                     f"{model_folder} fold {fold}")
        record.save(sidecar)
        records.append(record)
    return records


# ------------------------------------------------------------------ predictors


def _load_folds(onnx_folder: Path, names: list[str]) -> list[OnnxFold]:
    missing = [f for f in names if not (onnx_folder / f"fold_{f}.json").is_file()
               or not (onnx_folder / f"fold_{f}.onnx").is_file()]
    if missing:
        have = sorted(p.stem.removeprefix("fold_") for p in onnx_folder.glob("fold_*.json"))
        raise OnnxEngineError(f"{onnx_folder}: no ONNX export of fold(s) {', '.join(missing)}"
                              + (f"; exported: {', '.join(have)}" if have else "")
                              + "; run 'autoseg export-onnx'")
    return [OnnxFold.load(onnx_folder / f"fold_{f}.json") for f in names]


def onnx_predictor(onnx_folder: str | os.PathLike, folds: Iterable[int | str] | str = (0, 1, 2, 3, 4),
                   device: str | torch.device = "auto", tta: bool = True, overlap: float = 0.5,
                   num_threads: int | None = None, scratch_dir: str | os.PathLike | None = None) -> "Predictor":
    """A :class:`Predictor` whose fold networks run on onnxruntime, from a folder
    :func:`export_onnx` wrote (``plans.json``, ``fold_<k>.onnx``, ``fold_<k>.json``)."""
    from autoseg.inference.predictor import Predictor, fold_names
    from autoseg.planners.plans import Plans

    onnx_folder = Path(onnx_folder)
    plans_file = onnx_folder / "plans.json"
    if not plans_file.is_file():
        raise OnnxEngineError(f"{plans_file} does not exist: {onnx_folder} is not an ONNX export folder "
                              "(autoseg export-onnx writes one)")
    plans = Plans.load(plans_file)
    names = fold_names(folds)
    records = _load_folds(onnx_folder, names)
    configurations = {r.configuration for r in records}
    if len(configurations) != 1:
        raise OnnxEngineError(f"{onnx_folder}: folds were exported from different configurations: "
                              f"{', '.join(sorted(configurations))}")
    configuration = configurations.pop()
    try:
        config = plans.configuration(configuration)
    except KeyError as e:
        raise OnnxEngineError(f"{plans_file}: {e.args[0]}") from None
    for r in records:
        if r.num_classes != plans.num_classes or r.dim != config.dim:
            raise OnnxEngineError(f"{onnx_folder / r.onnx_name}: {r.num_classes} classes in {r.dim}D, but "
                                  f"{plans_file} plans {plans.num_classes} classes in {config.dim}D")
        if not r.dynamic_spatial and list(r.traced_shape) != list(config.inference_patch):
            raise OnnxEngineError(f"{onnx_folder / r.onnx_name}: exported for input size {r.traced_shape} only, but "
                                  f"the plans slide {config.inference_patch}; export again")
    dev = engine_device(device)
    networks = [OnnxNetwork(onnx_folder / r.onnx_name, r, dev, num_threads) for r in records]
    mirror_axes = None
    for r in records:
        if r.mirror_axes is not None:
            # flip at test time only what every fold was trained to see mirrored, as the torch engine does
            mirror_axes = set(r.mirror_axes) if mirror_axes is None else mirror_axes & set(r.mirror_axes)
    extra = {"scratch_dir": scratch_dir} if scratch_dir is not None else {}
    predictor = Predictor(plans, configuration, networks, device=dev, tta=tta, overlap=overlap, precision="fp32",
                          mirror_axes=sorted(mirror_axes) if mirror_axes is not None else None, **extra)
    predictor.model_folder = onnx_folder
    predictor.folds = names
    return predictor


def stale_folds(model_folder: str | os.PathLike, folds: Iterable[int | str] | str, checkpoint: str = "final",
                onnx_folder: str | os.PathLike | None = None) -> list[str]:
    """The folds whose ONNX export is missing, or was made from another checkpoint than the one there now."""
    from autoseg.inference.predictor import fold_names

    model_folder = Path(model_folder)
    onnx_folder = Path(onnx_folder) if onnx_folder is not None else model_folder / ONNX_FOLDER
    out = []
    for f in fold_names(folds):
        sidecar, onnx_file = onnx_folder / f"fold_{f}.json", onnx_folder / f"fold_{f}.onnx"
        ckpt = model_folder / f"fold_{f}" / f"checkpoint_{checkpoint}.pt"
        if not (sidecar.is_file() and onnx_file.is_file() and (onnx_folder / "plans.json").is_file()):
            out.append(f)
            continue
        try:
            record = OnnxFold.load(sidecar)
        except UserError:
            out.append(f)
            continue
        if record.checkpoint != checkpoint or not ckpt.is_file() or record.checkpoint_sha256 != file_sha256(ckpt):
            out.append(f)
    return out


def onnx_predictor_from_model_folder(model_folder: str | os.PathLike,
                                     folds: Iterable[int | str] | str = (0, 1, 2, 3, 4), checkpoint: str = "final",
                                     device: str = "auto", tta: bool = True, overlap: float = 0.5,
                                     precision: str = "auto", scratch_dir: str | os.PathLike | None = None,
                                     num_threads: int | None = None, exporter: str = "auto",
                                     progress: bool = True) -> "Predictor":
    """:meth:`Predictor.from_model_folder` with the networks on onnxruntime: same arguments, so a
    caller swaps one for the other. Folds not yet exported from the checkpoint there now are
    exported into ``<model_folder>/onnx`` first. onnxruntime runs fp32: ``precision`` must be
    auto or fp32."""
    from autoseg.inference.predictor import fold_names

    if precision not in ("auto", "fp32"):
        raise OnnxEngineError(f"--precision {precision} with --engine onnxruntime: onnxruntime predicts in fp32; "
                              "leave --precision out or use the torch engine")
    _require("onnxruntime")
    model_folder = Path(model_folder)
    names = fold_names(folds)
    todo = stale_folds(model_folder, names, checkpoint)
    if todo:
        if progress:
            print(f"exporting {model_folder.name} fold(s) {', '.join(todo)} to ONNX (once; kept in "
                  f"{model_folder / ONNX_FOLDER})")
        export_onnx(model_folder, model_folder / ONNX_FOLDER, todo, checkpoint=checkpoint, exporter=exporter,
                    progress=progress)
    predictor = onnx_predictor(model_folder / ONNX_FOLDER, names, device=device, tta=tta, overlap=overlap,
                               num_threads=num_threads, scratch_dir=scratch_dir)
    # the model folder, not the export: atlas-ISTN refinement reads its STN from the checkpoints there
    predictor.model_folder = model_folder
    return predictor

