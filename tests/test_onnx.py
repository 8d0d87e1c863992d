"""ONNX export: parity with PyTorch for every registry model, the input contract (0-255 pixels,
dynamic batch), metadata that makes the .onnx file usable alone, and `export --onnx`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (deepstart[onnx])")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (deepstart[onnx])")

from deepstart.cli import main
from deepstart.data.dataset import Preprocess
from deepstart.models.registry import create_model, list_models
from deepstart.recipes import get_recipe, list_recipes
from deepstart.ship.bundle import Bundle, BundleError, load_bundle, save_model
from deepstart.ship.onnx import (
    PARITY_RTOL,
    OnnxBundle,
    export_onnx,
    load_onnx,
)

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
# torch.export traces every layer: the deep or large ResNets take 5-20 s each to export and
# check on 2 busy cores (the others 1-4 s).
SLOW = {"resnet18", "resnet34", "resnet50", "resnet56", "efficientnet_lite0"}
# lite1/lite2 are lite0's code at other widths and depths (10 s of export each): lite0 speaks
# for the family here; test_efficientnet.py checks all three against the reference.
SAME_AS = {"efficientnet_lite1", "efficientnet_lite2"}
MODELS = [
    pytest.param(i.name, marks=pytest.mark.slow) if i.name in SLOW else i.name
    for i in list_models()
    if i.name not in SAME_AS
]


def _bundle(tmp_path: Path, name: str, **options) -> Bundle:
    info = next(i for i in list_models() if i.name == name)
    size = (min(info.input_size[0], 32), min(info.input_size[1], 32))
    c = info.in_channels
    torch.manual_seed(0)
    model = create_model(name, in_channels=c, num_classes=5, input_size=size, **options)
    with torch.no_grad():  # a zero-initialised head (fast_cifar) would make every logit 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    prep = Preprocess(size, c, tuple(0.3 + 0.1 * i for i in range(c)), (0.2,) * c, "crop")
    save_model(model, tmp_path / name, classes=CLASSES, preprocess=prep, extra={"note": "t"})
    return load_bundle(tmp_path / name)


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_pytorch_for_every_model(tmp_path, name):
    bundle = _bundle(tmp_path, name)
    res = export_onnx(bundle, tmp_path / f"{name}.onnx")
    print(f"{name}: max abs diff {res.max_abs_diff:.2e}, logits up to {res.max_abs_logit:.2f}")
    assert res.ok and res.max_abs_diff <= PARITY_RTOL * max(1.0, res.max_abs_logit)
    assert res.max_abs_logit > 0  # the check really ran the model
    # The same through the predictors: uint8 images in, probabilities out, any batch size.
    onnx = load_onnx(res.path)
    c, (h, w) = bundle.preprocess.channels, bundle.preprocess.size
    x = torch.randint(0, 256, (3, c, h, w), dtype=torch.uint8, generator=torch.Generator())
    assert torch.allclose(onnx.probabilities(x), bundle.probabilities(x), rtol=0, atol=1e-5)
    assert onnx.probabilities(x[:1]).shape == (1, 5)


@pytest.mark.parametrize(
    "recipe", [r.name for r in list_recipes() if r.model_options and not r.pretrained]
)
def test_onnx_matches_pytorch_for_every_recipes_own_net(tmp_path, recipe):
    """A recipe's net is not the registered default (mnist-fast folds its pixels into
    channels, cifar10-90's BatchNorm has no scale): a run of it must export as well."""
    r = get_recipe(recipe)
    bundle = _bundle(tmp_path, r.model, **r.model_options)
    res = export_onnx(bundle, tmp_path / f"{recipe}.onnx")
    assert res.ok and res.max_abs_diff <= PARITY_RTOL * max(1.0, res.max_abs_logit)
    assert res.max_abs_logit > 0


def test_the_input_is_pixels_and_the_metadata_travels(tmp_path):
    import onnxruntime as ort

    bundle = _bundle(tmp_path, "mnist_cnn")
    bundle.meta["input_stats"] = {"n": 3}  # anything in model.json travels with the model
    path = export_onnx(bundle, tmp_path / "m.onnx").path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("pixels", "tensor(float)", [1, 28, 28])
    assert isinstance(inp.shape[0], str)  # the dynamic batch axis
    assert (out.name, out.shape[1]) == ("logits", 5)
    # Raw 0-255 pixels in: the graph normalises with the training mean/std itself.
    x = torch.randint(0, 256, (4, 1, 28, 28)).float()
    (logits,) = session.run(None, {"pixels": x.numpy()})
    with torch.no_grad():
        want = bundle.model((x / 255 - 0.3) / 0.2)
    assert torch.allclose(torch.from_numpy(logits), want, atol=1e-4)
    meta = json.loads(session.get_modelmeta().custom_metadata_map["deepstart"])
    assert meta["format"] == "deepstart.onnx" and meta["model"]["classes"] == CLASSES
    onnx = load_bundle(path)  # load_bundle opens .onnx files too
    assert isinstance(onnx, OnnxBundle)
    assert onnx.classes == CLASSES and onnx.preprocess == bundle.preprocess
    assert onnx.meta["input_stats"] == {"n": 3} and onnx.meta["note"] == "t"


def _rewrite_metadata(src: Path, dst: Path, value: str | None) -> None:
    import onnx

    model = onnx.load(str(src))
    kept = [p for p in model.metadata_props if p.key != "deepstart"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if value is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "deepstart", value
    onnx.save(model, str(dst))


def test_foreign_newer_and_broken_onnx_files_are_refused(tmp_path):
    path = export_onnx(_bundle(tmp_path, "logreg"), tmp_path / "m.onnx", check=False).path
    meta = json.loads(load_onnx(path).session.get_modelmeta().custom_metadata_map["deepstart"])
    _rewrite_metadata(path, tmp_path / "foreign.onnx", None)
    with pytest.raises(BundleError, match="no deepstart metadata"):
        load_bundle(tmp_path / "foreign.onnx")
    _rewrite_metadata(path, tmp_path / "newer.onnx", json.dumps({**meta, "version": 99}))
    with pytest.raises(BundleError, match="newer than this deepstart"):
        load_bundle(tmp_path / "newer.onnx")
    _rewrite_metadata(path, tmp_path / "bad.onnx", "{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "bad.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x01junk" * 10)
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        load_bundle(tmp_path / "junk.onnx")


def test_cli_export_onnx_and_predict_with_it(tmp_path, capsys, monkeypatch):
    from PIL import Image

    bundle = _bundle(tmp_path, "vgg_small")
    run = tmp_path / "vgg_small"
    (run / "config.json").write_text(json.dumps({"model": {"name": "vgg_small"}}))
    assert main(["export", str(run), "--onnx", str(tmp_path / "v.onnx")]) == 0
    out = capsys.readouterr().out
    assert "onnx: " in out and "parity with PyTorch: max abs diff " in out
    diff = float(out.split("max abs diff ")[1].split()[0])
    assert 0 <= diff <= 1e-4
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(5):
        Image.effect_noise((40 + 7 * i, 30), 40 + 10 * i).save(images / f"{i}.png")
    Image.new("RGB", (20, 20), (10, 200, 30)).save(images / "green.jpg")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["predict", str(tmp_path / "v.onnx"), str(images), "--json", "--top-k", "5"]) == 0
    rows = json.loads(capsys.readouterr().out)
    torch_preds = bundle.predict(images)
    assert [r["file"] for r in rows] == [p.source for p in torch_preds]
    for r, p in zip(rows, torch_preds):
        got = {t["class"]: t["probability"] for t in r["top"]}
        assert got == pytest.approx(dict(zip(bundle.classes, p.probs.tolist())), abs=1e-5)
