"""Downloads against a loopback HTTP server, atomic writes and folders, lookup, and MNIST's
download path."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from deepstart import cache
from deepstart.data import mnist
from deepstart.data.dataset import DataError
from tests.loopback import Server


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # loopback must not go through a proxy
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEEPSTART_DATA", raising=False)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- cache.download -------------------------------------------------------------------------


def test_download_success_with_hash(server, tmp_path):
    payload = bytes(range(256)) * 1000
    (server.root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    got = cache.download([server.url + "blob.bin"], dest, sha256(payload), quiet=True)
    assert got == dest
    assert dest.read_bytes() == payload
    assert cache.sha256_file(dest) == sha256(payload)
    assert list(dest.parent.iterdir()) == [dest]  # no temp file left beside it


def test_download_wrong_hash_leaves_nothing(server, tmp_path):
    (server.root / "blob.bin").write_bytes(b"the wrong bytes")
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DataError) as info:
        cache.download([server.url + "blob.bin"], dest, "0" * 64, quiet=True)
    assert f"expected {'0' * 64}" in str(info.value)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no partial file either


def test_download_falls_back_to_second_mirror(server, tmp_path):
    (server.root / "b").mkdir()
    (server.root / "b" / "blob.bin").write_bytes(b"payload")
    urls = [server.url + "a/blob.bin", server.url + "b/blob.bin"]
    dest = cache.download(urls, tmp_path / "blob.bin", sha256(b"payload"), quiet=True)
    assert dest.read_bytes() == b"payload"
    assert server.requests == ["/a/blob.bin", "/b/blob.bin"]


def test_download_all_mirrors_fail_names_urls(server, tmp_path):
    urls = [server.url + "a/blob.bin", server.url + "b/blob.bin"]
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError) as info:
        cache.download(urls, dest, None, quiet=True)
    message = str(info.value)
    assert all(url in message for url in urls)
    assert "blob.bin" in message
    assert not dest.exists()


def test_atomic_write_leaves_nothing_on_exception(tmp_path):
    dest = tmp_path / "file.txt"
    with pytest.raises(RuntimeError), cache.atomic_write(dest) as f:
        f.write(b"half of it")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    # An existing file is kept as it was.
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), cache.atomic_write(dest) as f:
        f.write(b"new")
        raise RuntimeError("killed")
    assert dest.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dest]


def test_download_verify_rejects_a_mirror_and_tries_the_next(server, tmp_path):
    for mirror, data in (("a", b"bad payload"), ("b", b"good payload")):
        (server.root / mirror).mkdir()
        (server.root / mirror / "blob.bin").write_bytes(data)
    seen: list[tuple[Path, bytes]] = []

    def verify(path: Path) -> str | None:
        seen.append((path, path.read_bytes()))
        return None if path.read_bytes().startswith(b"good") else "does not start with good"

    urls = [server.url + "a/blob.bin", server.url + "b/blob.bin"]
    dest = cache.download(urls, tmp_path / "out" / "blob.bin", None, verify=verify, quiet=True)
    assert dest.read_bytes() == b"good payload"
    # verify saw each download in a temp file beside dest, before it took dest's name.
    assert [data for _, data in seen] == [b"bad payload", b"good payload"]
    assert all(p.parent == dest.parent and p != dest for p, _ in seen)
    assert list(dest.parent.iterdir()) == [dest]


def test_download_verify_failures_list_every_url_with_its_reason(server, tmp_path):
    (server.root / "a").mkdir()
    (server.root / "a" / "blob.bin").write_bytes(b"payload")
    urls = [server.url + "a/blob.bin", server.url + "gone/blob.bin"]
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DataError) as info:
        cache.download(urls, dest, None, verify=lambda p: "not what we wanted", quiet=True)
    message = str(info.value)
    assert message.startswith("could not download blob.bin: ")
    assert f"{urls[0]}: not what we wanted" in message and f"{urls[1]}: " in message
    assert list(dest.parent.iterdir()) == []  # rejected downloads leave nothing


def test_download_verify_runs_after_the_hash_check(server, tmp_path):
    (server.root / "blob.bin").write_bytes(b"payload")
    calls: list[Path] = []
    with pytest.raises(DataError, match="expected 0000"):
        cache.download(
            [server.url + "blob.bin"], tmp_path / "blob.bin", "0" * 64,
            verify=lambda p: calls.append(p), quiet=True,
        )  # fmt: skip
    assert calls == []  # a wrong hash rejects the file before verify sees it


def test_atomic_dir_renames_into_place_on_success(tmp_path):
    dest = tmp_path / "sub" / "done"
    with cache.atomic_dir(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".done.")
        assert not dest.exists()
        (tmp / "a.txt").write_text("complete")
    assert (dest / "a.txt").read_text() == "complete"
    assert list(dest.parent.iterdir()) == [dest]  # no temp folder left


def test_atomic_dir_removes_the_temp_folder_on_failure(tmp_path):
    dest = tmp_path / "done"
    with pytest.raises(KeyboardInterrupt), cache.atomic_dir(dest) as tmp:
        (tmp / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_or_replaces_an_existing_folder(tmp_path):
    dest = tmp_path / "done"
    dest.mkdir()
    (dest / "theirs.txt").write_text("first")
    # Another process finished first: its folder is kept, ours dropped.
    with cache.atomic_dir(dest) as tmp:
        (tmp / "ours.txt").write_text("second")
    assert [p.name for p in dest.iterdir()] == ["theirs.txt"]
    assert list(tmp_path.iterdir()) == [dest]
    # replace=True: the existing folder (a broken leftover) gives way.
    with cache.atomic_dir(dest, replace=True) as tmp:
        (tmp / "ours.txt").write_text("second")
    assert [p.name for p in dest.iterdir()] == ["ours.txt"]
    assert list(tmp_path.iterdir()) == [dest]


def test_looked_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTART_DATA", str(tmp_path / "env"))
    cache_dir = tmp_path / "cache"
    assert cache.looked_in(["x", "X"], tmp_path / "flag") == [
        tmp_path / "flag", tmp_path / "flag" / "x", tmp_path / "flag" / "X",
        tmp_path / "env", tmp_path / "env" / "x", tmp_path / "env" / "X",
        cache_dir, cache_dir / "x", cache_dir / "X",
    ]  # fmt: skip
    monkeypatch.delenv("DEEPSTART_DATA")
    assert cache.looked_in(["x"]) == [cache_dir, cache_dir / "x"]


# --- MNIST download end to end ----------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def serve_tiny_mnist(folder: Path, seed: int = 0) -> dict[str, bytes]:
    """Write gzipped tiny IDX files into ``folder``; return their decompressed bytes."""
    rng = np.random.default_rng(seed)
    raw = {
        mnist.TRAIN_IMAGES: idx_bytes(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
        mnist.TRAIN_LABELS: idx_bytes(rng.integers(0, 10, 6, dtype=np.uint8)),
        mnist.TEST_IMAGES: idx_bytes(rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)),
        mnist.TEST_LABELS: idx_bytes(rng.integers(0, 10, 2, dtype=np.uint8)),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in raw.items():
        (folder / name).write_bytes(gzip.compress(data, mtime=0))
    return raw


def test_load_mnist_downloads_once_into_cache(server, tmp_path, monkeypatch):
    raw = serve_tiny_mnist(server.root / "good")
    # The first mirror is missing everything: every file falls back to the second.
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [server.url + "gone/", server.url + "good/"])
    monkeypatch.setitem(mnist.SHA256, "mnist", {n: sha256(d) for n, d in raw.items()})
    train, test = mnist.load_mnist("mnist")
    assert (len(train), len(test)) == (6, 2)
    np.testing.assert_array_equal(
        train.images.numpy().reshape(-1), np.frombuffer(raw[mnist.TRAIN_IMAGES][16:], np.uint8)
    )
    cached = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(mnist.FILES)
    assert len(server.requests) == 8  # 4 files x (404, then found)

    mnist.load_mnist("mnist")  # from the cache now
    assert len(server.requests) == 8

    # With one file lost from the cache only that file is fetched again.
    (cached / mnist.TEST_LABELS).unlink()
    mnist.load_mnist("mnist")
    assert server.requests[8:] == ["/gone/" + mnist.TEST_LABELS, "/good/" + mnist.TEST_LABELS]


def test_content_hash_accepts_recompressed_rejects_changed(server, tmp_path, monkeypatch):
    raw = serve_tiny_mnist(server.root / "orig")
    # Mirror "recompressed" has the same content in differently compressed gzip streams;
    # mirror "changed" has one pixel altered.
    for name, data in raw.items():
        recompressed = server.root / "recompressed" / name
        recompressed.parent.mkdir(exist_ok=True)
        recompressed.write_bytes(gzip.compress(data, compresslevel=1, mtime=12345))
        assert recompressed.read_bytes() != (server.root / "orig" / name).read_bytes()
        changed = bytearray(data)
        changed[-1] ^= 1
        (server.root / "changed").mkdir(exist_ok=True)
        (server.root / "changed" / name).write_bytes(gzip.compress(bytes(changed)))
    monkeypatch.setitem(mnist.SHA256, "mnist", {n: sha256(d) for n, d in raw.items()})

    monkeypatch.setitem(mnist.MIRRORS, "mnist", [server.url + "recompressed/"])
    assert mnist.download_mnist("mnist", tmp_path / "a") == tmp_path / "a"
    assert len(mnist.load_mnist("mnist", data_dir=tmp_path / "a", download=False)[0]) == 6

    monkeypatch.setitem(mnist.MIRRORS, "mnist", [server.url + "changed/"])
    with pytest.raises(DataError) as info:
        mnist.download_mnist("mnist", tmp_path / "b")
    assert "decompressed sha256" in str(info.value) and server.url + "changed/" in str(info.value)
    assert str(info.value).startswith("mnist: ") and "without a network" in str(info.value)
    assert list((tmp_path / "b").iterdir()) == []  # nothing left behind


def test_file_hash_for_kmnist_checks_the_gz_itself(server, tmp_path, monkeypatch):
    raw = serve_tiny_mnist(server.root / "k")
    gz_hashes = {n: cache.sha256_file(server.root / "k" / n) for n in raw}
    monkeypatch.setitem(mnist.MIRRORS, "kmnist", [server.url + "k/"])
    monkeypatch.setitem(mnist.SHA256, "kmnist", gz_hashes)
    mnist.download_mnist("kmnist", tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == sorted(mnist.FILES)

    # The same content re-compressed is a different file, so a "file" hash rejects it.
    monkeypatch.setitem(mnist.HASH_OF, "kmnist", "file")
    (server.root / "k" / mnist.TEST_LABELS).write_bytes(
        gzip.compress(raw[mnist.TEST_LABELS], compresslevel=1, mtime=99)
    )
    with pytest.raises(DataError, match="t10k-labels"):
        mnist.download_mnist("kmnist", tmp_path / "bad")


def test_unknown_hash_downloads_with_warning(server, tmp_path, monkeypatch):
    raw = serve_tiny_mnist(server.root / "m")
    monkeypatch.setitem(mnist.MIRRORS, "mnist", [server.url + "m/"])
    monkeypatch.setitem(mnist.SHA256, "mnist", dict.fromkeys(raw))
    with pytest.warns(UserWarning, match="unverified"):
        mnist.download_mnist("mnist", tmp_path / "u")
    assert len(list((tmp_path / "u").iterdir())) == 4
