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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_umask(tmp_path, umask, mode):
    """mkstemp creates 0600; the final file has the mode open() would give it."""
    from torchreid_sdtps.io import current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        target = tmp_path / "out.json"
        write_json({"a": 1}, str(target))
        assert (os.stat(target).st_mode & 0o777) == mode
        with atomic_path(str(tmp_path / "ckpt.pth")) as tmp:
            assert (os.stat(tmp).st_mode & 0o777) == 0o600  # private while being written
            with open(tmp, "w") as fh:
                fh.write("x")
        assert (os.stat(tmp_path / "ckpt.pth").st_mode & 0o777) == mode
        assert sorted(os.listdir(tmp_path)) == ["ckpt.pth", "out.json"]
        assert current_umask() == umask  # reading it left it as it was
    finally:
        os.umask(old)


def test_umask_fallback_without_proc(tmp_path, monkeypatch):
    import builtins

    from torchreid_sdtps import io

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc"):
            raise OSError("no /proc")
        return real_open(path, *args, **kwargs)

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(builtins, "open", no_proc)
        assert io.current_umask() == 0o027
        assert io.new_file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # restored
    finally:
        os.umask(old)
