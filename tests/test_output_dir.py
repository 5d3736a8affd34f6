"""The output-folder rule: new, empty or own-marked folders only; nothing else is touched."""

from __future__ import annotations

import os

import pytest

from training.errors import MedVQAUserError
from training.output_dir import MARKER, marker_command, prepare_output_dir


def test_new_folder_is_created_and_marked(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b", "eval")
    assert out.is_dir() and marker_command(out) == "eval"


def test_empty_folder_accepted_and_rerun_by_same_command(tmp_path):
    prepare_output_dir(tmp_path, "score")
    (tmp_path / "report.json").write_text("{}")
    assert prepare_output_dir(tmp_path, "score") == tmp_path
    assert (tmp_path / "report.json").exists()


@pytest.mark.parametrize("content", ["foreign", "other-command"])
def test_foreign_folder_refused_and_untouched(tmp_path, content):
    (tmp_path / "QA_information").mkdir()
    (tmp_path / "QA_information" / "x.json").write_text("[]")
    if content == "other-command":
        prepare_output_dir(tmp_path / "o", "data convert")
        target = tmp_path / "o"
    else:
        target = tmp_path
    before = sorted(p.name for p in target.rglob("*"))
    with pytest.raises(MedVQAUserError) as err:
        prepare_output_dir(target, "data samples")
    assert str(target) in str(err.value)
    assert sorted(p.name for p in target.rglob("*")) == before


def test_regular_file_symlink_and_file_parent_refused(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("keep")
    with pytest.raises(MedVQAUserError, match="not a folder"):
        prepare_output_dir(f, "eval")
    with pytest.raises(MedVQAUserError, match="parent"):
        prepare_output_dir(f / "sub", "eval")
    link = tmp_path / "link"
    os.symlink(tmp_path / "elsewhere", link)
    with pytest.raises(MedVQAUserError, match="symbolic link"):
        prepare_output_dir(link, "eval")
    assert f.read_text() == "keep" and not (tmp_path / "elsewhere").exists()


def test_marker_that_is_garbage_is_no_marker(tmp_path):
    (tmp_path / MARKER).write_text("not json")
    with pytest.raises(MedVQAUserError):
        prepare_output_dir(tmp_path, "eval")
