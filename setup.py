from setuptools import find_packages, setup

setup(
    name="autoseg",
    version="0.1.0",
    description="Self-configuring medical image segmentation (plan, preprocess, train, predict, evaluate).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["autoseg", "autoseg.*"]),
    python_requires=">=3.10",
    # torch is pinned by the README/CI to the CPU wheel before this runs; a range
    # here keeps pip from replacing it with a CUDA build.
    install_requires=[
        "torch>=2.1",
        "numpy",
        "scipy",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "scikit-image",
        "tqdm",
        # Curves and report charts are PNGs people look at; matplotlib is the
        # field's standard plotting library and needs no display (Agg backend).
        "matplotlib",
        # Surface meshes (autoseg mesh, predict --meshes) in STL/VTK/OBJ: meshio is the
        # well-kept pure-Python mesh I/O library; small (numpy and rich).
        "meshio>=5.3",
    ],
    extras_require={
        "test": ["pytest"],
        # MONAI's transformer U-Nets (swin_unetr, unetr trainers): a well-kept implementation is
        # wrapped rather than rewritten; optional because nothing else in autoseg needs MONAI.
        "monai": ["monai>=1.4", "einops"],  # einops: MONAI builds both networks with it
        # quadric mesh decimation (autoseg mesh --decimate), the one pyvista uses; compiled, small
        "meshes": ["fast-simplification>=0.1"],
        # DICOM-SEG output (predict --output-format dicom-seg): highdicom is the maintained library
        # for it and validates what it builds; it brings pydicom, which DICOM input's checks read.
        "dicom": ["highdicom>=0.22"],
        # autoseg run --executor slurm: submitit submits and requeues the folds as a job array
        "slurm": ["submitit>=1.5"],
        # export-onnx and predict --engine onnxruntime: the ONNX format, its CPU/GPU runtime, and
        # onnxscript for torch's dynamo exporter (the one that exports the transformer networks)
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
    },
    entry_points={"console_scripts": ["autoseg=autoseg.cli:main"]},
)
