"""autoseg: self-configuring medical image segmentation.

The package follows the pipeline, one folder per stage:
``dataset`` -> ``fingerprint`` -> ``planners`` -> ``preprocessing`` -> ``networks`` /
``trainers`` -> ``inference`` -> ``evaluation`` / ``postprocessing``; ``commands`` holds
the CLI.
"""

__version__ = "0.1.0"


def predict(*args, **kwargs):
    """Predict numpy arrays or SimpleITK images; see :func:`autoseg.inference.api.predict`."""
    from autoseg.inference.api import predict as _predict

    return _predict(*args, **kwargs)
