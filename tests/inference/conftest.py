
import pytest

from autoseg.synthetic import make_dataset
from autoseg.workspace import DatasetWorkspace


from tests.inference.models import make_model, tiny_plans


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    raw = make_dataset(root / "raw", num_cases=3, shape=(10, 12, 12), spacing=(2.0, 1.0, 1.0), seed=1)
    ws = DatasetWorkspace(root / "ws" / "Tiny")
    plans = tiny_plans()
    plans.save(ws.plans_file)
    model = make_model(ws.root / "results", plans, "3d_fullres", folds=(0, 1))
    return raw, ws, model
