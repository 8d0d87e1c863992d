"""Bundles: dir and zip round trips for every registry model, versioning, broken and hostile
bundles (a bundle can never run code), export from a run directory."""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch

from deepstart.data.dataset import Preprocess
from deepstart.models.registry import create_model, list_models
from deepstart.ship import bundle as bundle_mod
from deepstart.ship.bundle import (
    Bundle,
    BundleError,
    export_bundle,
    load_bundle,
    load_model,
    read_zip_members,
    save_model,
)

# The ImageNet ResNets (11-24M parameters, 45-95 MB of weights) take several seconds each to
# write, verify and read back three times over.
MODELS = [
    pytest.param(i.name, marks=pytest.mark.slow) if i.input_size[0] >= 224 else i.name
    for i in list_models()
]
CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def _small(info) -> tuple[int, int]:
    # Every registry model ends in a global pool or takes its size; 32x32 keeps it fast.
    return min(info.input_size[0], 32), min(info.input_size[1], 32)


def _run_dir(tmp_path: Path, name: str = "vgg_small", channels: int = 1, size=(16, 16)) -> Path:
    """A run-directory look-alike: model.safetensors + model.json + config.json."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=channels, num_classes=5, input_size=size)
    with torch.no_grad():  # BatchNorm running stats away from (0, 1), so they must round-trip
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    prep = Preprocess(size, channels, (0.4,) * channels, (0.25,) * channels, "pad")
    run = tmp_path / "run"
    save_model(model, run, classes=CLASSES, preprocess=prep, extra={"dataset": "toy"})
    (run / "config.json").write_text(json.dumps({"train": {"epochs": 3}, "model": {"name": name}}))
    return run


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_dir_and_zip_give_identical_outputs(tmp_path, name):
    info = next(i for i in list_models() if i.name == name)
    size, c = _small(info), info.in_channels
    run = _run_dir(tmp_path, name, c, size)
    x = torch.randn(3, c, *size, generator=torch.Generator().manual_seed(1))
    original = load_model(run).model
    with torch.no_grad():
        want = original(x)
    for out in (tmp_path / "model.zip", tmp_path / "bundle_dir"):
        export_bundle(run, out)
        b = load_bundle(out)
        assert isinstance(b, Bundle) and not b.model.training
        assert b.classes == CLASSES and b.preprocess.resize == "pad"
        assert b.config == {"train": {"epochs": 3}, "model": {"name": name}}
        with torch.no_grad():
            assert torch.equal(b.model(x), want), out.name


def test_bundle_save_re_serialises_bit_identical_weights(tmp_path):
    run = _run_dir(tmp_path)
    b = load_bundle(run)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for out in ("again.zip", "again"):
        resaved = load_bundle(b.save(tmp_path / out))
        assert resaved.meta == b.meta and resaved.config == b.config
        with torch.no_grad():
            assert torch.equal(resaved.model(x), b.model(x))


def test_export_copies_the_run_files_byte_for_byte(tmp_path):
    run = _run_dir(tmp_path)
    old_mask = os.umask(0o022)
    try:
        export_bundle(run, tmp_path / "m.zip")
    finally:
        os.umask(old_mask)
    assert (tmp_path / "m.zip").stat().st_mode & 0o777 == 0o644  # not the temp file's 0600
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        assert sorted(zf.namelist()) == ["config.json", "model.json", "model.safetensors"]
        for name in zf.namelist():
            assert zf.read(name) == (run / name).read_bytes(), name
    export_bundle(run, tmp_path / "out")
    for name in ("config.json", "model.json", "model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (run / name).read_bytes()
    with pytest.raises(BundleError, match="run directory itself"):
        export_bundle(run, run)


def test_a_zip_of_a_folder_and_a_bundle_without_config_load(tmp_path):
    run = _run_dir(tmp_path)
    path = tmp_path / "folder.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("shapes-model/", b"")
        for name in ("model.json", "model.safetensors"):
            zf.write(run / name, f"shapes-model/{name}")
    b = load_bundle(path)
    assert b.config is None and b.classes == CLASSES


def _rewrite_meta(run: Path, **changes) -> None:
    meta = json.loads((run / "model.json").read_text())
    meta.update(changes)
    (run / "model.json").write_text(json.dumps(meta))


def test_a_newer_format_is_refused_in_a_dir_and_a_zip(tmp_path):
    run = _run_dir(tmp_path)
    _rewrite_meta(run, version=bundle_mod.VERSION + 1)
    with pytest.raises(BundleError, match=r"version 2 is newer .* upgrade deepstart"):
        load_bundle(run)
    zipped = tmp_path / "m.zip"
    bundle_mod.write_bundle(
        {n: (run / n).read_bytes() for n in ("model.json", "model.safetensors")}, zipped
    )
    with pytest.raises(BundleError, match="is newer"):
        load_bundle(zipped)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("json", "not valid JSON"),
        ("format", "not a deepstart model"),
        ("weights", "cannot load weights"),
        ("shapes", "cannot load weights"),
        ("no_weights", "no model.json \\+ model.safetensors"),
        ("config", "config.json: not valid JSON"),
    ],
)
def test_broken_bundles_give_a_bundle_error(tmp_path, damage, match):
    run = _run_dir(tmp_path)
    if damage == "json":
        (run / "model.json").write_text('{"format": "deepstart.model", ')
    elif damage == "format":
        _rewrite_meta(run, format="something.else")
    elif damage == "weights":
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "shapes":  # weights of another architecture (classes kept consistent)
        _rewrite_meta(run, arch={**json.loads((run / "model.json").read_text())["arch"],
                                 "num_classes": 7}, classes=[*CLASSES, "f", "g"])  # fmt: skip
    elif damage == "no_weights":
        (run / "model.safetensors").unlink()
    elif damage == "config":
        (run / "config.json").write_text("{oops")
    with pytest.raises(BundleError, match=match):
        load_bundle(run)
    if damage not in ("no_weights",):
        members = {n: (run / n).read_bytes() for n in ("model.json", "model.safetensors")}
        if damage == "config":
            members["config.json"] = b"{oops"
        bundle_mod.write_bundle(members, tmp_path / "b.zip")
        with pytest.raises(BundleError, match=match.replace("no model.json", "")):
            load_bundle(tmp_path / "b.zip")


def test_missing_zip_member_and_non_bundles(tmp_path):
    run = _run_dir(tmp_path)
    path = tmp_path / "half.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(run / "model.json", "model.json")
    with pytest.raises(BundleError, match=r"the zip has no model.safetensors"):
        load_bundle(path)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(BundleError, match=r"no model.json at the top"):
        load_bundle(tmp_path / "other.zip")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path / "notes.txt")
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere.zip")
    truncated = tmp_path / "cut.zip"
    export_bundle(run, tmp_path / "full.zip")
    truncated.write_bytes((tmp_path / "full.zip").read_bytes()[:-30])  # central directory cut
    with pytest.raises(BundleError):
        load_bundle(truncated)


@pytest.mark.parametrize(
    "evil", ["../model.json", "/etc/model.json", "a/../../x", "C:evil", "a\\b"]
)
def test_zip_with_an_escaping_member_name_is_refused(tmp_path, evil):
    run = _run_dir(tmp_path)
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("model.json", "model.safetensors"):
            zf.write(run / name, name)
        zf.writestr(zipfile.ZipInfo(evil), b"payload")
    with pytest.raises(BundleError, match="unsafe member name"):
        load_bundle(path)
    assert not (tmp_path.parent / "model.json").exists()


def test_oversized_members_are_refused(tmp_path, monkeypatch):
    run = _run_dir(tmp_path)
    export_bundle(run, tmp_path / "m.zip")
    assert read_zip_members(tmp_path / "m.zip")["model.json"] == (run / "model.json").read_bytes()
    monkeypatch.setattr(bundle_mod, "MAX_JSON_BYTES", 100)
    with pytest.raises(BundleError, match=r"model.json is over the 100-byte limit"):
        load_bundle(tmp_path / "m.zip")
    monkeypatch.setattr(bundle_mod, "MAX_JSON_BYTES", 10**6)
    monkeypatch.setattr(bundle_mod, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(BundleError, match=r"model.safetensors is over"):
        load_bundle(tmp_path / "m.zip")


class _Trap:
    """Unpickling this creates a file: proof that a loader ran code from the bundle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_weights_file_is_never_unpickled(tmp_path):
    run = _run_dir(tmp_path)
    marker = tmp_path / "code-ran"
    (run / "model.safetensors").write_bytes(pickle.dumps({"w": _Trap(marker)}))
    with pytest.raises(BundleError, match="cannot load weights"):
        load_bundle(run)
    export = {n: (run / n).read_bytes() for n in ("model.json", "model.safetensors")}
    bundle_mod.write_bundle(export, tmp_path / "trap.zip")
    with pytest.raises(BundleError, match="cannot load weights"):
        load_bundle(tmp_path / "trap.zip")
    assert not marker.exists()


def test_a_regression_model_is_not_an_image_bundle(tmp_path):
    model = create_model("fit_mlp")
    save_model(model, tmp_path / "fit", classes=[], preprocess=None)
    assert load_model(tmp_path / "fit").preprocess is None  # save/load still work for it
    with pytest.raises(BundleError, match="not an image classifier"):
        load_bundle(tmp_path / "fit")


def test_probabilities_checks_the_batch_and_matches_softmax(tmp_path):
    b = load_bundle(_run_dir(tmp_path))
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    p = b.probabilities(x)
    assert p.shape == (4, 5) and torch.allclose(p.sum(1), torch.ones(4))
    normalised = (x.float() / 255 - 0.4) / 0.25
    with torch.no_grad():
        assert torch.allclose(p, b.model(normalised).softmax(1), atol=1e-6)
    with pytest.raises(BundleError, match=r"wants \(N, 1, 16, 16\) uint8"):
        b.probabilities(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(BundleError, match="uint8"):
        b.probabilities(torch.zeros(1, 1, 16, 16))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"classes": ["a", "b"]}, "2 class names for a model with 5 outputs"),
        ({"classes": [*CLASSES, "extra"]}, "6 class names for a model with 5 outputs"),
        (
            {"preprocess": {"size": [16, 16], "channels": 1, "mean": [0.4], "std": [0.0]}},
            "preprocess std must be positive and finite",
        ),
        (
            {"preprocess": {"size": [16, 16], "channels": 1, "mean": [0.4], "std": [-1.0]}},
            "preprocess std must be positive and finite",
        ),
        (
            {"preprocess": {"size": [16, 16], "channels": 1, "mean": [0.4, 0.4], "std": [0.2]}},
            "mean/std have 2/1 values for 1 channels",
        ),
        ({"preprocess": {"size": [16], "channels": 1}}, "broken preprocess"),
    ],
)
def test_a_bundle_that_would_predict_nonsense_is_refused_at_load(tmp_path, changes, match):
    # Before: a short class list gave an IndexError in predict and HTTP 500 in serve; std 0
    # gave NaN probabilities with exit 0.
    run = _run_dir(tmp_path)
    _rewrite_meta(run, **changes)
    for load in (load_bundle, load_model):
        with pytest.raises(BundleError, match=re.escape(match)):
            load(run)
    zipped = tmp_path / "b.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for f in run.iterdir():
            z.write(f, f.name)
    with pytest.raises(BundleError, match=re.escape(match)):
        load_bundle(zipped)
