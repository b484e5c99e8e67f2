"""Which files of an input folder make a case."""

import pytest

from autoseg.errors import UserError
from autoseg.inference.cases import find_input_cases




def test_find_input_cases_both_layouts(tmp_path):
    for n in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "single").mkdir(exist_ok=True)
        (tmp_path / "single" / n).touch()
    cases = find_input_cases(tmp_path / "single", 1)
    assert [(c.case_id, c.ending) for c in cases] == [("a", ".nii.gz"), ("b", ".nii.gz")]
    (tmp_path / "nn").mkdir()
    for n in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", ".partial-x-c_0000.nii.gz"):
        (tmp_path / "nn" / n).touch()
    cases = find_input_cases(tmp_path / "nn", 2)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [f.name for f in cases[1].files] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    (tmp_path / "nn" / "b_0001.nii.gz").unlink()
    with pytest.raises(UserError, match="b_0001"):
        find_input_cases(tmp_path / "nn", 2)
