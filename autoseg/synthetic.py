"""Small synthetic datasets: the demo's built-in data and the tests' fixtures.

Each case is a noisy volume holding two touching ellipsoids (labels 1 and 2) at a random
position, size and brightness, with a smooth intensity bias, so a network must learn shape
and context rather than a threshold. Everything is seeded: the same call makes the same files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from autoseg.dataset.imageio import Geometry, write_image


def make_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image (float32) and label map (uint8), both ``shape``."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    center = np.array([rng.uniform(0.35, 0.65) * s for s in shape])
    radii = np.array([rng.uniform(0.15, 0.25) * s for s in shape])
    label = np.zeros(shape, np.uint8)
    d1 = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), center, radii))
    label[d1 <= 1] = 1
    # the second structure sits against the first along x, smaller
    c2 = center + np.array([0, 0, radii[2] * 1.3])
    d2 = sum(((g - c) / (r * 0.6)) ** 2 for g, c, r in zip((zz, yy, xx), c2, radii))
    label[(d2 <= 1) & (label == 0)] = 2
    image = np.zeros(shape, np.float32)
    image[label == 1] = rng.uniform(0.8, 1.2)
    image[label == 2] = rng.uniform(1.6, 2.2)
    bias = 1 + 0.2 * np.sin(xx / shape[2] * np.pi + rng.uniform(0, np.pi))
    image = image * bias + rng.normal(0, 0.35, shape).astype(np.float32) + 0.3
    return (image * 100).astype(np.float32), label


def make_dataset(
    root: str | Path,
    num_cases: int = 10,
    shape: tuple[int, int, int] = (24, 32, 32),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    modality: str = "MRI",
) -> Path:
    """Write an MSD-layout dataset (``dataset.json``, ``imagesTr``, ``labelsTr``); returns ``root``.

    ``spacing`` is in ``(z, y, x)`` order; ``shape`` too. A case's shape varies by a few voxels
    so planning sees a realistic spread.
    """
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    training = []
    for i in range(num_cases):
        case_shape = tuple(int(s + rng.integers(-2, 3)) if s > 4 else s for s in shape)
        image, label = make_case(rng, case_shape)
        geometry = Geometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)
        name = f"case_{i:03d}.nii.gz"
        write_image(image, geometry, root / "imagesTr" / name)
        write_image(label, geometry, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": root.name,
        "description": "synthetic ellipsoids made by autoseg.synthetic",
        "tensorImageSize": "3D",
        "modality": {"0": modality},
        "labels": {"0": "background", "1": "inner", "2": "outer"},
        "numTraining": num_cases,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root
