"""A folder of real-looking photos, end to end: mixed sizes and modes, a corrupt file, EXIF
rotation, trained with a ResNet from the command line (issue 5's photo acceptance)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from deepstart.cli import main


def _photo(h: int, w: int, kind: int, seed: int) -> Image.Image:
    """A colour picture whose class is visible: warm stripes (kind 0) or cool blobs (kind 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:
        base = (np.sin(xx / 4.0) > 0)[..., None] * np.array([200, 90, 40])
    else:
        cx, cy = rng.integers(0, w), rng.integers(0, h)
        base = ((xx - cx) ** 2 + (yy - cy) ** 2 < (min(h, w) / 3) ** 2)[..., None] * np.array(
            [40, 110, 210]
        )
    noise = rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def write_photos(root: Path, n: int = 12) -> dict[str, int]:
    """Two classes of photos in every size and mode a user's folder might hold; returns how
    many of each kind were written."""
    sizes = [(96, 128), (150, 100), (200, 200), (64, 80), (120, 160), (333, 250)]
    for c, name in enumerate(("stripes", "blobs")):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            im = _photo(h, w, c, seed=100 * c + i)
            kind = i % 6
            if kind == 0:
                im.save(d / f"{i}.jpg", quality=90)
            elif kind == 1:
                im.convert("L").save(d / f"{i}_grey.jpg")  # a greyscale JPEG
            elif kind == 2:
                im.convert("RGBA").save(d / f"{i}_alpha.png")
            elif kind == 3:
                im.convert("P", palette=Image.Palette.ADAPTIVE).save(d / f"{i}_palette.gif")
            elif kind == 4:
                im.convert("CMYK").save(d / f"{i}_cmyk.jpg")
            else:  # stored sideways, with the EXIF tag that says so (as phones do)
                exif = Image.Exif()
                exif[0x0112] = 6
                im.rotate(90, expand=True).save(d / f"{i}_exif.jpg", exif=exif)
    (root / "stripes" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {"images": 2 * n, "corrupt": 1}


def test_resnet18_trains_on_a_folder_of_mixed_photos(tmp_path, capsys):
    written = write_photos(tmp_path / "photos")
    out = tmp_path / "runs"
    code = main(
        [
            "train",
            "--data", "folder",
            "--data-dir", str(tmp_path / "photos"),
            "--size", "128",
            "--channels", "3",
            "--model", "resnet18",
            "--epochs", "1",
            "--batch-size", "8",
            "--valid-pct", "0.25",
            "--out", str(out),
            "--progress", "plain",
            "--no-report",
        ]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "broken.jpg" in text  # the corrupt file is named, the rest still train
    (run_dir,) = out.iterdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    summary = cfg["resolved"]["dataset"]
    assert summary["size"] == [128, 128] and summary["channels"] == 3
    assert sum(summary["splits"].values()) == written["images"]
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    model = json.loads((run_dir / "model.json").read_text())
    assert model["arch"]["name"] == "resnet18"
    assert model["preprocess"]["size"] == [128, 128]
