"""learn.predict answers one picture with one Prediction, the same as the exported bundle,
whatever form the picture takes (path, PIL image, HWC/CHW array, tensor, float in [0, 1]),
a list with a list, and refuses a layout it cannot tell; learn.export writes that bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.data.dataset import ImageSet, make_dataset
from deepstart.data.inputs import Prediction
from deepstart.errors import DataError
from deepstart.models.registry import create_model
from deepstart.ship.bundle import load_bundle
from deepstart.train.learner import Learner
from tests.conftest import bars

CLASSES = ["class0", "class1", "class2"]


def _rgb(s: ImageSet) -> ImageSet:
    # Colour bars: channel c of class c is brighter, so layouts that mix channels up differ.
    x = s.images.expand(-1, 3, -1, -1).clone()
    for c in range(3):
        x[s.labels == c, c] //= 2
    return ImageSet(x, s.labels, s.classes)


@pytest.fixture(scope="module")
def learn():
    data = make_dataset("rgb-bars", _rgb(bars(120)), _rgb(bars(30, seed=1)), valid_pct=0.2)
    torch.manual_seed(0)
    model = create_model("vgg_small", in_channels=3, num_classes=3, input_size=(16, 16))
    # fp32, as bundles compute ("auto" may pick bf16 autocast on this CPU)
    learn = Learner(data, model, device="cpu", precision="fp32", batch_size=32, log=lambda m: None)
    learn.fit_one_cycle(1, 3e-3)
    return learn


@pytest.fixture(scope="module")
def bundle(learn, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "bars.zip"
    assert learn.export(path) == path
    return load_bundle(path)


def _picture(seed: int = 0, size: int = 64) -> np.ndarray:
    """A (size, size, 3) uint8 picture: a coloured band on noise."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    a[size // 3 : 2 * size // 3, :, 1] = 230
    return a


def _same(p: Prediction, q: Prediction) -> None:
    assert p.error is None and q.error is None
    assert p.label == q.label
    torch.testing.assert_close(p.probs, q.probs, rtol=0, atol=1e-6)


def test_one_pil_image_is_one_prediction_equal_to_the_bundles(learn, bundle):
    pil = Image.fromarray(_picture())  # 64x64 RGB: once (64, K), 64 "predictions"
    p = learn.predict(pil)
    assert isinstance(p, Prediction) and p.probs.shape == (3,)
    assert p.source == "<input 0>" and p.label in CLASSES and len(p.top) == 3
    assert p.probability == p.top[0][1] == pytest.approx(float(p.probs.max()))
    _same(p, bundle.predict(pil)[0])
    assert len(learn.predict(pil, top_k=1).top) == 1


def test_hwc_chw_tensor_and_unit_float_arrays_agree(learn, bundle):
    hwc = _picture(1, size=16)
    p = learn.predict(hwc)
    _same(p, learn.predict(hwc.transpose(2, 0, 1)))  # CHW
    _same(p, learn.predict(torch.from_numpy(hwc).permute(2, 0, 1)))  # a CHW tensor
    _same(p, learn.predict(hwc.astype(np.float32) / 255))  # float in [0, 1]
    _same(p, learn.predict(Image.fromarray(hwc)))  # the same pixels as a PIL image
    _same(p, bundle.predict(hwc)[0])


def test_a_path_is_read_as_the_bundle_reads_it(learn, bundle, tmp_path):
    path = tmp_path / "band.png"
    Image.fromarray(_picture(2, size=40)).save(path)
    p = learn.predict(str(path))
    assert p.source == str(path)
    _same(p, learn.predict(path))
    _same(p, bundle.predict(path)[0])
    with pytest.raises(DataError, match=r"missing\.png: no such file"):
        learn.predict(tmp_path / "missing.png")  # alone: an error, not a quiet record


def test_a_list_a_batch_and_a_folder_give_lists(learn, bundle, tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_picture(3)).save(path)
    items = [path, Image.fromarray(_picture(4)), _picture(5, size=16), tmp_path / "nope.png"]
    preds = learn.predict(items)
    assert isinstance(preds, list) and len(preds) == 4
    assert preds[3].error == "no such file or folder"  # in a list, the others go on
    for p, q in zip(preds[:3], bundle.predict(items, log=lambda m: None)[:3], strict=True):
        _same(p, q)
    batch = learn.data.valid.images[:5]  # (5, 3, 16, 16): a batch, five predictions
    preds = learn.predict(batch)
    assert [p.source for p in preds] == [f"<input {i}>" for i in range(5)]
    probs, _ = learn.get_preds(batch)
    torch.testing.assert_close(torch.stack([p.probs for p in preds]), probs)
    assert len(learn.predict(batch.permute(0, 2, 3, 1).numpy())) == 5  # NHWC
    assert [p.source for p in learn.predict(tmp_path)] == [str(path)]  # a folder: a list


def test_a_layout_that_cannot_be_told_is_refused(learn):
    with pytest.raises(DataError, match=r"\(3, 32, 3\).*pass a PIL image"):
        learn.predict(np.zeros((3, 32, 3), np.uint8))
    with pytest.raises(DataError, match="pass a list of PIL images"):
        learn.predict(np.zeros((2, 3, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"channel axis.*x\[:, None\]"):
        learn.predict(np.zeros((10, 28, 28), np.uint8))  # Keras's x_test[:10]: say how


def test_images_unlike_the_training_ones_are_logged(learn):
    said: list[str] = []
    learn.log = said.append
    try:
        learn.predict(255 - learn.data.valid.images[:16])  # inverted
    finally:
        learn.log = lambda m: None
    assert said and all(m.startswith("warning: ") and "images to predict" in m for m in said)


def test_export_writes_a_bundle_a_directory_too(learn, tmp_path):
    out = learn.export(tmp_path / "bundle")
    assert out == tmp_path / "bundle" and (out / "model.json").is_file()
    b = load_bundle(out)
    assert b.classes == CLASSES and b.preprocess == learn.preprocess
    assert b.meta["dataset"] == "rgb-bars" and b.meta["input_stats"]
    pil = Image.fromarray(_picture(6))
    _same(learn.predict(pil), b.predict(pil)[0])


def test_a_prediction_reads_in_one_line_without_its_tensor():
    import torch

    from deepstart.data.inputs import Prediction

    p = Prediction("<input 0>", (("7", 0.9885), ("9", 0.0095)), torch.rand(1000))
    assert repr(p) == "Prediction('7' 98.9%; then '9' 0.9%; <input 0>)"
    assert "tensor" not in repr(p) and len(repr(p)) < 120
    assert repr(Prediction("a.jpg", error="broken")) == "Prediction(error 'broken'; a.jpg)"
