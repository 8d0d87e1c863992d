"""Safe archive extraction: unsafe members refused, interrupted extractions never reused."""

from __future__ import annotations

import io
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from deepstart.data import archive
from deepstart.data.archive import extract_archive
from deepstart.data.dataset import DataError
from deepstart.data.folder import load_folder


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSTART_CACHE", str(cache))
    return cache


def _tree(root: Path, classes=("a", "b"), n: int = 3) -> Path:
    """``root/<class>/<i>.png``: n small grey PNGs per class."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", (10, 12), 60 + 40 * c + i).save(root / name / f"{i}.png")
    return root


def _archive(tree_parent: Path, out: Path, fmt: str) -> Path:
    base = shutil.make_archive(str(out), fmt, root_dir=tree_parent, base_dir="tree")
    return Path(base)


def _evil_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    png = io.BytesIO()
    Image.new("L", (4, 4), 9).save(png, format="PNG")
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("tree/a/ok.png")
        good.size = len(png.getvalue())
        tar.addfile(good, io.BytesIO(png.getvalue()))
        bad = tarfile.TarInfo(name)
        bad.type, bad.linkname = kind, link
        if kind == tarfile.REGTYPE:
            bad.size = len(png.getvalue())
            tar.addfile(bad, io.BytesIO(png.getvalue()))
        else:
            tar.addfile(bad)
    return path


def _evil_zip(path: Path, name: str, file_type: int = stat.S_IFREG) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tree/a/ok.png", b"x")
        info = zipfile.ZipInfo(name)
        info.external_attr = (file_type | 0o644) << 16
        zf.writestr(info, b"../../../etc/passwd" if file_type == stat.S_IFLNK else b"x")
    return path


EVIL = {
    "tar-dotdot": ("e.tar.gz", "../../../evil.png", "absolute path or '..'"),
    "tar-absolute": ("e.tar.gz", "ABS", "absolute path or '..'"),
    "tar-symlink": ("e.tar.gz", "tree/a/evil.png", "refusing link"),
    "tar-hardlink": ("e.tar.gz", "tree/a/evil.png", "refusing link"),
    "tar-device": ("e.tar.gz", "tree/a/evil.png", "refusing device"),
    "zip-dotdot": ("e.zip", "tree/../../evil.png", "absolute path or '..'"),
    "zip-absolute": ("e.zip", "ABS", "absolute path or '..'"),
    "zip-symlink": ("e.zip", "tree/a/evil.png", "refusing link or special"),
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_malicious_archives_are_refused(tmp_path, _cache, case):
    victim = tmp_path / "victim"
    victim.mkdir()
    file_name, member, message = EVIL[case]
    member = str(victim / "evil.png") if member == "ABS" else member
    path = tmp_path / file_name
    if case == "tar-symlink":
        _evil_tar(path, member, tarfile.SYMTYPE, "../../../../victim/evil.png")
    elif case == "tar-hardlink":
        _evil_tar(path, member, tarfile.LNKTYPE, "../victim/evil.png")
    elif case == "tar-device":
        _evil_tar(path, member, tarfile.CHRTYPE)
    elif case.startswith("tar"):
        _evil_tar(path, member)
    else:
        _evil_zip(path, member, stat.S_IFLNK if case == "zip-symlink" else stat.S_IFREG)
    with pytest.raises(DataError, match=re.escape(message)):
        load_folder(path)
    assert not list(tmp_path.rglob("evil.png")) and not list(victim.iterdir())
    assert not list((_cache / "extracted").iterdir())  # the partial extraction is gone


def test_zip_members_without_a_file_type_are_accepted(tmp_path, _cache):
    # Zips written by many tools record permissions only (no S_IFREG bits).
    png = io.BytesIO()
    Image.new("L", (4, 4), 9).save(png, format="PNG")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        for name in ("a/x.png", "b/y.png"):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o600 << 16
            zf.writestr(info, png.getvalue())
    data = load_folder(tmp_path / "plain.zip", quiet=True)
    assert data.classes == ["a", "b"] and data.train.images.shape == (2, 1, 4, 4)


def test_killed_extraction_is_not_reused(tmp_path, _cache, monkeypatch):
    _tree(tmp_path / "src" / "tree")
    packed = _archive(tmp_path / "src", tmp_path / "data", "zip")
    real = archive._extract_zip

    def killed_halfway(src, dest):
        real(src, dest)
        shutil.rmtree(dest / "tree" / "b")  # as if killed before the second class
        raise KeyboardInterrupt

    # A SIGKILL runs no cleanup: keep rmtree from tidying the partial folder away.
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(archive, "_extract_zip", killed_halfway)
        m.setattr(shutil, "rmtree", lambda *a, **k: None)
        extract_archive(packed, quiet=True)
    (partial,) = (_cache / "extracted").iterdir()
    assert partial.name.startswith(".")  # never under the final name
    data = load_folder(packed, quiet=True)
    assert data.classes == ["a", "b"] and data.train.class_counts() == [3, 3]
