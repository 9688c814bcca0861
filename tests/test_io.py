"""atomic_path: the final name holds a complete file or the old one, never a partial one."""
import json
import os

import pytest

from torchreid_sdtps.io import atomic_path, write_json


def test_success_moves_the_file_into_place(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_path(str(target)) as tmp:
        with open(tmp, "w") as fh:
            fh.write("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["out.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "w") as fh:
                fh.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_json_is_atomic_and_readable(tmp_path):
    target = tmp_path / "r.json"
    assert write_json({"mAP": 0.5, "ranks": [1, 5]}, str(target)) == str(target)
    assert json.loads(target.read_text()) == {"mAP": 0.5, "ranks": [1, 5]}
    target.write_text("old")
    with pytest.raises(TypeError):
        write_json({"bad": object()}, str(target))
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.json"]
