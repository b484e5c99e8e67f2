"""``autoseg.predict``: segment images from Python without writing files.

    import autoseg
    seg = autoseg.predict(volume, spacing=(3.0, 0.8, 0.8), dataset="Task04_Hippocampus")
    seg_img = autoseg.predict(sitk.ReadImage("ct.nii.gz"), model_folder="results/unet__3d_fullres")

Loaded predictors are cached per (model folder, folds, settings): calling ``predict`` in a
loop does not reload the networks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from autoseg.errors import UserError
from autoseg.dataset.imageio import Geometry

_CACHE: dict[tuple, Any] = {}


def _predictors(model_folder, dataset, configuration, folds, workspace, trainer, checkpoint, device, tta,
                overlap, precision) -> tuple[list, dict | None]:
    from autoseg.inference.predictor import Predictor, fold_names
    from autoseg.postprocessing.selection import DEFAULT_FOLDS, models_to_predict
    from autoseg.workspace import resolve_dataset

    fold_list = None if folds is None else fold_names(folds)
    if model_folder is not None:
        post, folders = None, [Path(model_folder)]
        fold_list = fold_list or fold_names(DEFAULT_FOLDS)
    else:
        if dataset is None:
            raise UserError("autoseg.predict needs model_folder= or dataset=")
        ws = resolve_dataset(dataset, workspace)
        pairs, fold_list, post = models_to_predict(ws, configuration, trainer, fold_list)
        folders = [ws.results_dir(t, c) for t, c in pairs]
    out = []
    for folder in folders:
        key = (str(Path(folder).resolve()), tuple(fold_list), checkpoint, device, tta, overlap, precision)
        if key not in _CACHE:
            _CACHE[key] = Predictor.from_model_folder(folder, folds=fold_list, checkpoint=checkpoint, device=device,
                                                      tta=tta, overlap=overlap, precision=precision)
        out.append(_CACHE[key])
    return out, post


def predict(
    images: Any,
    model_folder: str | os.PathLike | None = None,
    dataset: str | None = None,
    configuration: str | None = None,
    folds: Iterable[int | str] | str | None = None,
    workspace: str | os.PathLike | None = None,
    tta: bool = True,
    spacing: Sequence[float] | None = None,
    trainer: str = "unet",
    checkpoint: str = "final",
    device: str = "auto",
    overlap: float = 0.5,
    precision: str = "auto",
    postprocessing: dict | bool = True,
    return_probabilities: bool = False,
):
    """Segment one image.

    ``images``: a numpy array ``(C, Z, Y, X)`` or ``(Z, Y, X)`` (single channel) with
    ``spacing`` ``(z, y, x)`` in mm (default 1 mm), a SimpleITK image, or a file path.
    The model: ``model_folder`` (a ``results/<trainer>__<configuration>`` folder), or
    ``dataset`` (+ optional ``configuration``; without it, ``best_configuration.json`` with
    its ensemble and postprocessing). ``postprocessing``: True follows best_configuration.json,
    False turns it off, a dict is a connected-component spec.

    Returns a SimpleITK image when given one (same geometry), else a numpy label map
    ``(Z, Y, X)`` of label values; with ``return_probabilities`` a tuple ``(seg, probabilities)``
    where probabilities are ``(K, Z, Y, X)`` float32 in the input's grid: ``K`` image-sized float32
    volumes in memory (4 bytes x classes x voxels), which prediction otherwise never holds.
    """
    from autoseg.dataset.imageio import array_to_image, image_to_array
    from autoseg.inference.predictor import predict_case

    as_sitk = False
    if isinstance(images, (str, os.PathLike)):
        from autoseg.dataset.imageio import read_image

        image, geometry = read_image(images)
    elif type(images).__module__.startswith("SimpleITK"):
        image, geometry = image_to_array(images)
        as_sitk = True
    else:
        image = np.asarray(images)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise ValueError(f"expected a (C, Z, Y, X) or (Z, Y, X) array, got shape {image.shape}")
        sp = tuple(float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
        if len(sp) != 3:
            raise ValueError(f"spacing must be (z, y, x), got {spacing}")
        geometry = Geometry(sp, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), 3)

    predictors, post = _predictors(model_folder, dataset, configuration, folds, workspace, trainer, checkpoint,
                                   device, tta, overlap, precision)
    spec = post if postprocessing is True else (postprocessing or None)
    prediction = predict_case(predictors, image.astype(np.float32, copy=False), geometry, postprocessing=spec,
                              probabilities=bool(return_probabilities))
    seg = prediction.segmentation
    result = array_to_image(seg, geometry) if as_sitk else seg
    return (result, prediction.probabilities) if return_probabilities else result
