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

from autoseg.cli import UserError
from autoseg.dataset.imageio import Geometry

_CACHE: dict[tuple, Any] = {}


def _predictors(model_folder, dataset, configuration, folds, workspace, trainer, checkpoint, device, tta,
                overlap, precision) -> tuple[list, dict | None]:
    from autoseg.inference.predictor import Predictor

    if model_folder is not None:
        pairs, post, folders = None, None, [Path(model_folder)]
        fold_list = folds
    else:
        if dataset is None:
            raise UserError("autoseg.predict needs model_folder= or dataset=")
        import argparse

        from autoseg.commands.predict import selected_models
        from autoseg.workspace import resolve_dataset

        ws = resolve_dataset(dataset, workspace)
        args = argparse.Namespace(configuration=configuration, trainer=trainer,
                                  folds=None if folds is None else [str(f) for f in _as_list(folds)],
                                  no_postprocessing=False)
        pairs, fold_list, post = selected_models(ws, args)
        folders = [ws.results_dir(t, c) for t, c in pairs]
    if fold_list is None:
        fold_list = (0, 1, 2, 3, 4)
    out = []
    for folder in folders:
        key = (str(Path(folder).resolve()), tuple(str(f) for f in _as_list(fold_list)), checkpoint, device, tta,
               overlap, precision)
        if key not in _CACHE:
            _CACHE[key] = Predictor(folder, folds=_as_list(fold_list), checkpoint=checkpoint, device=device,
                                    tta=tta, overlap=overlap, precision=precision)
        out.append(_CACHE[key])
    return out, post


def _as_list(folds) -> list:
    if isinstance(folds, (str, int)):
        return [folds]
    return list(folds)


def _from_sitk(img) -> tuple[np.ndarray, Geometry]:
    from autoseg.dataset.imageio import _split_geometry
    import SimpleITK as sitk

    geometry = _split_geometry(img)
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)
        if img.GetDimension() == 2:
            arr = arr[:, None]
    elif img.GetDimension() == 2:
        arr = arr[None, None]
    elif img.GetDimension() == 3:
        arr = arr[None]
    return arr, geometry


def _to_sitk(seg: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    if geometry.file_ndim == 2:
        img = sitk.GetImageFromArray(seg[0])
        img.SetSpacing((geometry.spacing[2], geometry.spacing[1]))
        if len(geometry.origin) == 2:
            img.SetOrigin(geometry.origin)
        if len(geometry.direction) == 4:
            img.SetDirection(geometry.direction)
        return img
    img = sitk.GetImageFromArray(seg)
    img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


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
    where probabilities are ``(K, Z, Y, X)`` float32 in the input's grid.
    """
    from autoseg.inference.export import segmentation_from_probabilities
    from autoseg.inference.predictor import average_probabilities

    as_sitk = False
    if isinstance(images, (str, os.PathLike)):
        from autoseg.dataset.imageio import ImageReadError, read_image

        try:
            image, geometry = read_image(images)
        except ImageReadError as e:
            raise UserError(str(e)) from None
    elif type(images).__module__.startswith("SimpleITK"):
        image, geometry = _from_sitk(images)
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
    image = image.astype(np.float32, copy=False)
    probs = average_probabilities(p.predict_probabilities(image, geometry) for p in predictors)
    label_values = predictors[0].label_values
    seg = segmentation_from_probabilities(probs, label_values)
    spec = post if postprocessing is True else (postprocessing or None)
    if spec:
        from autoseg.postprocessing.connected_components import apply_postprocessing

        seg = apply_postprocessing(seg, spec, label_values)
    result = _to_sitk(seg, geometry) if as_sitk else seg
    return (result, probs) if return_probabilities else result
