from pathlib import Path

import pytest
import torch

from deepstart.data.dataset import ImageSet, make_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real cache or data directory."""
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("DEEPSTART_DATA", raising=False)
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory):
    """(cache dir, first load): the shared CIFAR-10 JPEG archive extracted and decoded once.

    Each test's own empty cache would make every test that reads the archive extract and
    decode all 60,000 JPEGs again (16 s on 2 cores); these tests read it, so they share one
    cache. The first load is returned too: it is the one that really decoded.
    """
    from deepstart.data.folder import load_folder

    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"{CIFAR_ARCHIVE} not found (the shared CIFAR-10 JPEG copy)")
    cache = tmp_path_factory.mktemp("cifar-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSTART_CACHE", str(cache))
        first = load_folder(CIFAR_ARCHIVE, quiet=True)
    return cache, first


def bars(n: int, seed: int = 0, size: int = 16, k: int = 3) -> ImageSet:
    """A learnable toy set: class c has a bright horizontal band in stripe c, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    images = torch.randint(0, 80, (n, 1, size, size), generator=g, dtype=torch.uint8)
    band = size // k
    for c in range(k):
        images[labels == c, :, c * band : (c + 1) * band, :] += 150
    return ImageSet(images, labels, [f"class{c}" for c in range(k)])


@pytest.fixture
def toy_data():
    return make_dataset("bars", bars(240, seed=0), bars(60, seed=1), valid_pct=0.2, seed=0)
