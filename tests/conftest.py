from pathlib import Path

import pytest
import torch

from deepstart.data.dataset import ImageSet, make_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real cache or data directory."""
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("DEEPSTART_DATA", raising=False)
    torch.set_num_threads(min(2, torch.get_num_threads()))


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
