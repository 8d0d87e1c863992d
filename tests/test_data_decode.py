"""decode_image and its parts on their own (through load_folder: test_data_folder.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepstart.data.dataset import DataError
from deepstart.data.decode import check_size, decode_image, fit, to_channels


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_decode_image_shapes(tmp_path):
    path = _save(tmp_path / "x.jpg", Image.new("RGB", (300, 200), (20, 120, 220)), quality=95)
    full = decode_image(path)
    small = decode_image(path, size=(16, 24), channels=1, resize="crop")
    assert full.shape == (200, 300, 3) and full.dtype == np.uint8
    assert small.shape == (16, 24, 1)


def test_decode_image_applies_exif_and_alpha(tmp_path):
    stored = np.zeros((10, 20), dtype=np.uint8)
    stored[:, :10] = 255  # left half white; orientation 6 brings it to the top
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "rot.jpg", Image.fromarray(stored), exif=exif, quality=95)
    rotated = decode_image(path)
    assert rotated.shape == (20, 10, 1)
    assert rotated[:10].mean() > 200 and rotated[10:].mean() < 50
    rgba = _save(tmp_path / "a.png", Image.new("RGBA", (3, 2), (200, 100, 50, 128)))
    assert decode_image(rgba)[0, 0].tolist() == [100, 50, 25]  # 50% alpha over black


def test_check_size():
    assert check_size(None) is None
    assert check_size(32) == (32, 32)
    assert check_size((8, 12)) == (8, 12)
    for bad in (0, -1, (8,), (8, 0), (8, 8, 8), (8.0, 8)):
        with pytest.raises(DataError, match="size must be a positive int"):
            check_size(bad)


def test_fit_policies_reach_the_size():
    wide = Image.new("L", (40, 20), 200)  # 40 wide, 20 tall
    for policy in ("squish", "crop", "pad"):
        assert fit(wide, (16, 16), policy).size == (16, 16)
    padded = np.asarray(fit(wide, (16, 16), "pad"))
    assert (padded[:4] == 0).all() and (padded[4:12] == 200).all() and (padded[12:] == 0).all()
    assert fit(wide, (20, 40)) is wide  # already the size: untouched


def test_to_channels():
    rgba = np.full((2, 2, 4), 200, np.uint8)
    assert to_channels(rgba, 1)[0, 0].tolist() == [157]  # 78% alpha over black, then luma
    grey = np.full((2, 3), 7, np.uint8)
    assert to_channels(grey, None).shape == (2, 3, 1)
    assert to_channels(grey, 3).shape == (2, 3, 3) and (to_channels(grey, 3) == 7).all()
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = (10, 200, 30)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))[0, 0]
    assert to_channels(rgb, 1)[0, 0, 0] == expected  # Pillow's own luma
