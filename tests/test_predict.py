"""Prediction: Bundle.predict on paths, PIL images and arrays against Learner.predict of the
same run; files of many formats and modes; unreadable files and decompression bombs; the
mismatch warning; and the `export` and `predict` subcommands on a tiny shapes run."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.cli import main
from deepstart.data.dataset import DataError
from deepstart.run.runner import load_run_learner
from deepstart.ship.bundle import load_bundle
from deepstart.ship.predict import (
    InputMismatchWarning,
    Prediction,
    array_images,
    find_images,
    predict,
    read_image,
    refuse_bombs,
)
from deepstart.train.learner import Learner

SHAPES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny shapes run (16x16 grey, 1 epoch) shared by the tests of this file."""
    tmp = tmp_path_factory.mktemp("predict-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSTART_CACHE", str(tmp / "cache"))
        args = ["train", "--data", "shapes", "--data-opt", "n_train=240", "--data-opt",
                "n_test=60", "--size", "16", "--model", "vgg_small", "--epochs", "2",
                "--lr", "3e-3", "--batch-size", "32", "--out", str(tmp / "runs"),
                "--progress", "none", "--no-report"]  # fmt: skip
        assert main(args) == 0
    (run,) = (tmp / "runs").iterdir()
    return run


@pytest.fixture(scope="module")
def learn(run_dir):
    """The run's model in a Learner computing in fp32, as bundles do ("auto" precision picks
    bf16 autocast on CPUs with native bf16, which moves probabilities by ~1e-3)."""
    base = load_run_learner(run_dir, device="cpu")
    return Learner(base.data, base.model, device="cpu", preprocess=base.preprocess,
                   precision="fp32", guard=False)  # fmt: skip


def _test_images(learn, n: int = 12) -> torch.Tensor:
    return learn.data.test.images[:n]  # (n, 1, 16, 16) uint8


def _probs(preds: list[Prediction]) -> torch.Tensor:
    assert all(p.error is None for p in preds), [p.error for p in preds]
    return torch.stack([p.probs for p in preds])


def test_bundle_predict_equals_learner_predict_for_paths_pil_and_arrays(run_dir, learn, tmp_path):
    images = _test_images(learn)
    want, _ = learn.get_preds(images)  # (12, 3)
    bundle = load_bundle(run_dir)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(img[0].numpy()).save(paths[-1])
    assert torch.equal(_probs(bundle.predict(paths, top_k=3)), want)
    pil = [Image.fromarray(img[0].numpy()) for img in images]
    assert torch.equal(_probs(bundle.predict(pil)), want)
    assert torch.equal(_probs(bundle.predict(images)), want)  # NCHW tensor
    nhwc = images.permute(0, 2, 3, 1).numpy()
    assert torch.equal(_probs(bundle.predict(nhwc)), want)
    singles = [img[0].numpy() for img in images]  # HW arrays, one image each
    assert torch.equal(_probs(bundle.predict(singles)), want)
    # A folder gives its files in name order, the same as listing them.
    assert torch.equal(_probs(bundle.predict(tmp_path)), want)
    # Another size goes through the same resize as Learner.predict/evaluate.
    big = torch.nn.functional.interpolate(images.float(), size=(23, 29)).round().to(torch.uint8)
    assert torch.equal(_probs(bundle.predict(big)), learn.get_preds(big)[0])
    # The top-k is the sorted probabilities (a batch of one may differ in the last bit).
    pred = bundle.predict(paths[0], top_k=2)[0]
    assert torch.allclose(pred.probs, want[0], rtol=0, atol=1e-6)
    values, idx = pred.probs.topk(2)
    assert pred.top == tuple((SHAPES[i], float(v)) for v, i in zip(values, idx))
    assert pred.label == SHAPES[int(want[0].argmax())] and pred.source == str(paths[0])


def test_zip_bundle_predicts_like_the_run_dir(run_dir, learn, tmp_path):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m.zip")]) == 0
    images = _test_images(learn)
    zipped = load_bundle(tmp_path / "m.zip")
    assert torch.equal(_probs(zipped.predict(images)), learn.get_preds(images)[0])
    assert zipped.config is not None and zipped.config["model"]["name"] == "vgg_small"


def _write_formats(folder: Path) -> dict[str, Path]:
    """One picture (a bright square on grey) saved in many formats, modes and sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.full((48, 40, 3), 90, np.uint8)
    rgb[10:38, 8:32] = (250, 200, 120)
    base = Image.fromarray(rgb)
    grey = base.convert("L")
    written = {
        "rgb.png": (base, {}),
        "grey.jpg": (grey, {"quality": 90}),  # greyscale JPEG
        "rgb.jpg": (base.resize((120, 100)), {"quality": 90}),
        "rgba.png": (base.convert("RGBA"), {}),
        "palette.gif": (base.convert("P"), {}),
        "small.bmp": (grey.resize((9, 7)), {}),
        "photo.webp": (base.resize((64, 64)), {"quality": 90}),
        "grey16.png": (Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), {}),
        "mono.png": (grey.convert("1"), {}),
    }
    out = {}
    for name, (im, kw) in written.items():
        im.save(folder / name, **kw)
        out[name] = folder / name
    return out


def test_predict_reads_every_format_and_mode(run_dir, tmp_path):
    bundle = load_bundle(run_dir)
    files = _write_formats(tmp_path / "imgs")
    preds = bundle.predict(sorted(files.values()), log=lambda msg: None)  # not shapes: warns
    assert [Path(p.source).name for p in preds] == sorted(files)
    for p in preds:
        assert p.error is None, (p.source, p.error)
        assert p.probs.shape == (3,) and abs(float(p.probs.sum()) - 1) < 1e-5
    # Each file is decoded as the training folders were: the probabilities are those of the
    # decoded pixels (grey, 16x16, padded: this run's Preprocess).
    with refuse_bombs():
        pixels = torch.stack([read_image(f, bundle.preprocess) for f in sorted(files.values())])
    assert pixels.shape == (len(files), 1, 16, 16)
    assert torch.equal(_probs(preds), bundle.probabilities(pixels))
    # A greyscale JPEG and the PNG of the same picture come out nearly the same pixels.
    grey_jpg = pixels[sorted(files).index("grey.jpg")].float()
    rgb_png = pixels[sorted(files).index("rgb.png")].float()
    assert (grey_jpg - rgb_png).abs().mean() < 4


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the pixel data is absent."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_unreadable_files_and_bombs_fail_alone(run_dir, tmp_path, monkeypatch):
    bundle = load_bundle(run_dir)
    good = tmp_path / "good.png"
    Image.new("L", (8, 8), 200).save(good)  # 64 pixels: under the lowered limit below
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "junk.gif").write_text("hello")
    (tmp_path / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    names = ["good.png", "corrupt.jpg", "junk.gif", "bomb.png", "truncated.png", "nope.png"]
    preds = bundle.predict([tmp_path / n for n in names], log=lambda msg: None)
    by_name = {Path(p.source).name: p for p in preds}
    assert list(by_name) == names
    assert by_name["good.png"].error is None and by_name["good.png"].label in SHAPES
    assert all(p.probs is None and not p.top for n, p in by_name.items() if n != "good.png")
    assert by_name["corrupt.jpg"].error == "broken image file: Truncated File Read"
    assert "not an image" in by_name["junk.gif"].error
    # Over twice Image.MAX_IMAGE_PIXELS: Pillow's DecompressionBombError, before any decoding.
    assert "decompression bomb" in by_name["bomb.png"].error
    assert "10000000000 pixels" in by_name["bomb.png"].error
    assert by_name["truncated.png"].error.startswith("broken image file: ")
    assert "truncated" in by_name["truncated.png"].error
    assert by_name["nope.png"].error == "no such file or folder"
    # Between the limit and twice it Pillow only warns; predict makes that an error too.
    small_bomb = tmp_path / "small_bomb.png"
    Image.new("L", (12, 12)).save(small_bomb)  # 144 pixels: over a limit of 100, under 200
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    good_p, bomb_p = bundle.predict([good, small_bomb], log=lambda msg: None)
    assert good_p.error is None
    assert "decompression bomb" in bomb_p.error and "144 pixels" in bomb_p.error


def test_array_images_layouts():
    hw = np.arange(30, dtype=np.uint8).reshape(5, 6)
    assert array_images(hw).shape == (1, 1, 5, 6)
    hwc = np.stack([hw, hw, hw], axis=2)
    assert torch.equal(array_images(hwc), array_images(np.transpose(hwc, (2, 0, 1))))
    assert array_images(torch.zeros(2, 8, 9, 3, dtype=torch.uint8)).shape == (2, 3, 8, 9)
    assert array_images(torch.zeros(2, 3, 8, 9, dtype=torch.uint8)).shape == (2, 3, 8, 9)
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 128  # half-transparent light grey over black
    assert torch.equal(array_images(rgba), array_images(rgba.transpose(2, 0, 1)))
    batch = array_images(rgba[None].repeat(2, 0))
    assert batch.shape == (2, 3, 5, 6) and int(batch[1, 2, 4, 5]) == 100  # 200 * 128 / 255
    # A 3x4 image of 4 channels or a 4x4 one of 3? Refused, never guessed.
    with pytest.raises(DataError, match="channels-first or channels-last; pass a PIL image"):
        array_images(np.zeros((3, 4, 4), np.uint8))
    # Floats in [0, 1] are pixels / 255; floats outside it are refused, not clipped.
    half = np.full((4, 5), 0.5, np.float32)
    assert torch.equal(array_images(half), torch.full((1, 1, 4, 5), 128, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"\[0, 1\].*divide by 255"):
        array_images(half * 255)
    with pytest.raises(DataError, match="channel axis"):
        array_images(np.zeros((10, 10, 10), np.uint8))


def test_find_images_walks_folders_and_globs(tmp_path):
    for rel in ("a/1.png", "a/b/2.JPG", "a/.hidden/3.png", "a/notes.txt", "c.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    files, errors = find_images([tmp_path / "a", str(tmp_path / "*.webp"), tmp_path / "a/1.png"])
    rel = [f.relative_to(tmp_path).as_posix() for f in files]
    assert rel == ["a/1.png", "a/b/2.JPG", "c.webp"] and errors == []
    _, errors = find_images([str(tmp_path / "*.gif"), tmp_path / "missing"])
    assert [e.error for e in errors] == [
        "no image files match this pattern",
        "no such file or folder",
    ]


def test_mismatch_warning_on_images_prepared_differently(run_dir, learn):
    from deepstart.data.mismatch import input_stats

    bundle = load_bundle(run_dir)
    bundle.meta["input_stats"] = input_stats(learn.data.train.images)
    logged: list[str] = []
    bundle.predict(learn.data.train.images[:64], log=logged.append)
    assert logged == []
    inverted = 255 - learn.data.test.images[:32]
    bundle.predict(inverted, log=logged.append)
    assert logged and all("images to predict" in m for m in logged)
    with pytest.warns(InputMismatchWarning, match="images to predict"):
        predict(bundle, inverted)


# --- the command line ---------------------------------------------------------------------


def test_cli_export_and_predict(run_dir, learn, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps long paths at 80 columns
    assert main(["export", str(run_dir), "--out", str(tmp_path / "bundle")]) == 0
    assert main(["export", str(run_dir), "--out", str(tmp_path / "model.zip")]) == 0
    assert "bundle: " in capsys.readouterr().out
    imgs = tmp_path / "imgs"
    files = _write_formats(imgs / "sub")
    for i, img in enumerate(_test_images(learn, 4)):
        Image.fromarray(img[0].numpy()).save(imgs / f"t{i}.png")
    want = {f"t{i}.png": p for i, p in enumerate(learn.get_preds(_test_images(learn, 4))[0])}

    for bundle in (run_dir, tmp_path / "bundle", tmp_path / "model.zip"):
        assert main(["predict", str(bundle), str(imgs), "--json", "--top-k", "3"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == 4 + len(files)
        for r in rows:
            name = Path(r["file"]).name
            assert r["error"] is None and len(r["top"]) == 3
            if name in want:
                got = {t["class"]: t["probability"] for t in r["top"]}
                assert got == pytest.approx(dict(zip(SHAPES, want[name].tolist())), abs=1e-6)

    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = main(["predict", str(tmp_path / "model.zip"), str(imgs / "t*.png"),
                 str(imgs / "broken.png"), str(imgs / "sub/grey.jpg")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert "t0.png" in out and "grey.jpg" in out and "error: cannot identify" in out
    assert any(c in out for c in SHAPES) and "%" in out
    assert "broken.png: cannot identify image file" in err and "1 of 6 inputs failed" in err

    assert main(["predict", str(run_dir), str(imgs / "t0.png"), "--csv", "--top-k", "2"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == ["file", "class_1", "probability_1", "class_2", "probability_2", "error"]
    assert len(table) == 2 and table[1][1] == SHAPES[int(want["t0.png"].argmax())]
    assert float(table[1][2]) == pytest.approx(float(want["t0.png"].max()), abs=1e-6)

    assert main(["predict", str(run_dir), str(tmp_path / "nothing-here")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["export", str(run_dir)]) == 2
    assert "--out model.zip" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.zip"), str(imgs)]) == 2
    assert "does not exist" in capsys.readouterr().err
