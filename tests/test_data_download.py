"""download=True with gdown replaced by a fake: atomic extraction, source selection, failures."""
from __future__ import annotations

import os
import os.path as osp
import shutil
import sys
import tarfile
import types
import zipfile

import pytest
from _trees import make_msvr310_tree, make_rgbnt201_tree

from torchreid_sdtps.data import MSVR310, RGBNT201
from torchreid_sdtps.data.download import DRIVE_SOURCES, how_to_get


def _zip_tree(src_root: str, top: str, out: str) -> str:
    with zipfile.ZipFile(out, "w") as zf:
        for d, _, names in os.walk(osp.join(src_root, top)):
            for n in names:
                full = osp.join(d, n)
                zf.write(full, osp.relpath(full, src_root))
    return out


class FakeGdown(types.ModuleType):
    """Stands in for gdown: serves prepared archives, records every call."""

    def __init__(self, files: dict[str, str], folder: list | None = None):
        super().__init__("gdown")
        self.files = files  # drive id -> local archive to serve
        self.folder = folder or []
        self.calls: list[tuple] = []

    def download(self, url=None, output=None, quiet=False, id=None, **kw):
        self.calls.append(("download", id))
        src = self.files.get(id)
        if src is None:
            return None
        out = osp.join(output, osp.basename(src)) if output.endswith(os.sep) else output
        os.makedirs(osp.dirname(out), exist_ok=True)
        shutil.copy(src, out)
        return out

    def download_folder(self, url=None, id=None, output=None, quiet=False, skip_download=False,
                        **kw):
        self.calls.append(("download_folder", id))
        assert skip_download
        return [types.SimpleNamespace(id=fid, path=path, local_path=osp.join(output, path))
                for fid, path in self.folder]


@pytest.fixture
def archives(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    make_rgbnt201_tree(src, num_ids=2, cams=1, per_cam=1)
    make_msvr310_tree(src, num_ids=2, cams=1, per_cam=1, scenes=1)
    os.rename(osp.join(src, "MSVR310"), osp.join(src, "msvr310"))  # other case in the archive
    out = tmp_path_factory.mktemp("archives")
    rgbnt = _zip_tree(str(src), "RGBNT201", str(out / "RGBNT201.zip"))
    msvr = str(out / "MSVR310.tar.gz")
    with tarfile.open(msvr, "w:gz") as tf:
        tf.add(osp.join(src, "msvr310"), arcname="msvr310")
    return {"rgbnt201": rgbnt, "msvr310": msvr}


def test_rgbnt201_download_from_drive_folder(tmp_path, archives, monkeypatch):
    other = str(tmp_path / "Market1501-MM.zip")
    fake = FakeGdown({"f-201": archives["rgbnt201"], "f-mm": other},
                     folder=[("f-mm", "Market1501-MM.zip"), ("f-201", "RGBNT201.zip")])
    monkeypatch.setitem(sys.modules, "gdown", fake)
    root = tmp_path / "data"
    ds = RGBNT201(root=str(root), download=True, verbose=False)
    assert len(ds.train) == 2 and len(ds.query) == 2
    assert os.listdir(root) == ["RGBNT201"]  # no temporary folder or archive left
    src = DRIVE_SOURCES["RGBNT201"]
    assert fake.calls == [("download_folder", src.drive_id), ("download", "f-201")]
    fake.calls.clear()
    RGBNT201(root=str(root), download=True, verbose=False)  # present: no new download
    assert fake.calls == []


def test_msvr310_download_tar_with_other_folder_name(tmp_path, archives, monkeypatch):
    fake = FakeGdown({DRIVE_SOURCES["MSVR310"].drive_id: archives["msvr310"]})
    monkeypatch.setitem(sys.modules, "gdown", fake)
    ds = MSVR310(root=str(tmp_path), download=True, verbose=False)
    assert len(ds.train) == 2 and sorted(os.listdir(tmp_path)) == ["MSVR310"]


def test_failed_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", FakeGdown({}))
    with pytest.raises(RuntimeError, match="could not download") as err:
        MSVR310(root=str(tmp_path), download=True, verbose=False)
    assert "by hand from " + DRIVE_SOURCES["MSVR310"].url in str(err.value)
    assert os.listdir(tmp_path) == []


def test_unextractable_archive_is_kept_and_named(tmp_path, monkeypatch):
    rar = tmp_path / "src" / "MSVR310.rar"
    rar.parent.mkdir()
    rar.write_bytes(b"Rar!\x1a\x07\x00 not really")
    monkeypatch.setitem(sys.modules, "gdown",
                        FakeGdown({DRIVE_SOURCES["MSVR310"].drive_id: str(rar)}))
    root = tmp_path / "data"
    with pytest.raises(RuntimeError) as err:
        MSVR310(root=str(root), download=True, verbose=False)
    kept = str(root / "MSVR310.rar")
    assert kept in str(err.value) and "not a zip or tar" in str(err.value)
    assert os.listdir(root) == ["MSVR310.rar"]


def test_existing_incomplete_folder_is_not_overwritten(tmp_path, archives, monkeypatch):
    fake = FakeGdown({DRIVE_SOURCES["MSVR310"].drive_id: archives["msvr310"]})
    monkeypatch.setitem(sys.modules, "gdown", fake)
    (tmp_path / "MSVR310" / "mine").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="never overwritten"):
        MSVR310(root=str(tmp_path), download=True, verbose=False)
    assert fake.calls == [] and os.listdir(tmp_path / "MSVR310") == ["mine"]


def test_no_download_without_asking(tmp_path, monkeypatch):
    fake = FakeGdown({})
    monkeypatch.setitem(sys.modules, "gdown", fake)
    with pytest.raises(FileNotFoundError):
        RGBNT201(root=str(tmp_path), verbose=False)
    assert fake.calls == []


def test_how_to_get_mentions_links(tmp_path):
    assert DRIVE_SOURCES["MSVR310"].url in how_to_get("MSVR310", str(tmp_path))
    assert "baidu" in how_to_get("RGBNT100", str(tmp_path))
    assert "No public download" in how_to_get("synthetic_msreid", str(tmp_path))
