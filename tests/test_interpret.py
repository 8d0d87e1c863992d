"""Interpretation tables (exact, on hand-made predictions) and the plots drawn from them."""

import math

import pytest
import torch
from PIL import Image

from deepstart.data.dataset import ImageSet
from deepstart.interpret import plots
from deepstart.interpret.analysis import Interpretation
from deepstart.train.learner import Learner


def _interp(targets, probs, classes=("a", "b", "c")):
    n = len(targets)
    images = ImageSet(
        torch.arange(n * 16, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 4, 4),
        torch.tensor(targets),
        list(classes),
    )
    return Interpretation(images, torch.tensor(probs, dtype=torch.float32))


@pytest.fixture
def interp():
    # true a a a b b c c c ; predicted a b a b a c c b (from the argmax of each row)
    return _interp(
        [0, 0, 0, 1, 1, 2, 2, 2],
        [
            [0.90, 0.05, 0.05],  # a -> a, sure
            [0.30, 0.60, 0.10],  # a -> b
            [0.50, 0.25, 0.25],  # a -> a, unsure
            [0.20, 0.70, 0.10],  # b -> b
            [0.80, 0.15, 0.05],  # b -> a, confidently wrong
            [0.10, 0.10, 0.80],  # c -> c
            [0.05, 0.05, 0.90],  # c -> c, sure
            [0.10, 0.45, 0.45],  # c -> b (tie broken towards the first max by argmax)
        ],
    )


def test_confusion_matrix_counts_and_rows(interp):
    cm = interp.confusion_matrix()
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]
    assert int(cm.sum()) == len(interp.targets)
    assert float(cm.diag().sum()) / len(interp.targets) == pytest.approx(interp.accuracy)
    norm = interp.confusion_matrix(normalise=True)
    assert norm.sum(dim=1).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert norm[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_per_class_precision_recall_f1(interp):
    rows = {r["class"]: r for r in interp.per_class()}
    # a: tp 2, predicted 3 (two a's and one b), support 3
    assert rows["a"]["precision"] == pytest.approx(2 / 3)
    assert rows["a"]["recall"] == pytest.approx(2 / 3)
    # b: tp 1, predicted 3, support 2 -> p 1/3, r 1/2, f1 = 2pr/(p+r) = 0.4
    assert rows["b"]["precision"] == pytest.approx(1 / 3)
    assert rows["b"]["recall"] == pytest.approx(1 / 2)
    assert rows["b"]["f1"] == pytest.approx(0.4)
    assert rows["c"]["precision"] == pytest.approx(1.0)
    assert rows["c"]["recall"] == pytest.approx(2 / 3)
    assert [r["support"] for r in rows.values()] == [3, 2, 3]
    assert [r["predicted"] for r in rows.values()] == [3, 3, 2]
    macro = interp.macro_average()
    assert macro["recall"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_undefined_precision_is_nan_not_zero():
    it = _interp([0, 1, 2], [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1]])
    rows = it.per_class()
    assert rows[0]["precision"] == pytest.approx(1 / 3)
    assert math.isnan(rows[1]["precision"])  # nothing predicted as b
    assert math.isnan(rows[1]["f1"])
    assert not math.isnan(it.macro_average()["precision"])


def test_most_confused_sorted_by_count():
    it = _interp(
        [0, 0, 0, 1, 2, 2],
        [[0.1, 0.8, 0.1]] * 3 + [[0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],
    )
    assert it.most_confused() == [("a", "b", 3), ("b", "c", 1), ("c", "b", 1)]
    assert it.most_confused(min_count=2) == [("a", "b", 3)]
    assert it.most_confused(k=1) == [("a", "b", 3)]


def test_top_losses_sorted_and_equal_to_cross_entropy(interp):
    order = interp.top_losses()
    losses = interp.losses[order]
    assert torch.all(losses[:-1] >= losses[1:])
    expected = torch.nn.functional.nll_loss(interp.probs.log(), interp.targets, reduction="none")
    assert torch.allclose(interp.losses, expected)
    assert int(order[0]) == 4  # b called a with p(b) = 0.15: the highest loss
    assert interp.loss == pytest.approx(float(expected.mean()))
    assert interp.top_losses(3).tolist() == order[:3].tolist()


def test_certain_mistake_has_finite_loss():
    it = _interp([0, 1], [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.isfinite(it.losses).all()
    assert it.top_losses().tolist() == [0, 1]


def test_most_confident_per_class(interp):
    right = interp.most_confident(correct=True, per_class=2)
    assert right["a"].tolist() == [0, 2]  # 0.90 then 0.50
    assert right["b"].tolist() == [3]
    assert right["c"].tolist() == [6, 5]  # 0.90 then 0.80
    wrong = interp.most_confident(correct=False, per_class=1)
    assert wrong["a"].tolist() == [1]
    assert wrong["b"].tolist() == [4]
    assert wrong["c"].tolist() == [7]
    for idx in right.values():
        assert bool((interp.preds[idx] == interp.targets[idx]).all())
    for idx in wrong.values():
        assert bool((interp.preds[idx] != interp.targets[idx]).all())


def test_most_uncertain_is_nearest_to_chance(interp):
    order = interp.most_uncertain()
    conf = interp.confidence[order]
    assert torch.all(conf[:-1] <= conf[1:])
    assert int(order[0]) == 7  # top probability 0.45, nearest to 1/3
    assert float(conf[0]) >= 1 / 3


def test_summary_is_consistent(interp):
    s = interp.summary(top=4)
    assert s["n"] == 8
    assert sum(map(sum, s["confusion"])) == 8
    assert [r["index"] for r in s["top_losses"]] == interp.top_losses(4).tolist()
    assert s["chance_bits"] == pytest.approx(math.log2(3))
    text = interp.text_summary()
    assert "accuracy 0.6250" in text
    assert "a -> b: 1" in text


def test_probs_shape_is_checked():
    with pytest.raises(ValueError, match="expected"):
        _interp([0, 1], [[0.5, 0.5]])


def test_from_learner_matches_evaluate(toy_data):
    from deepstart.models.registry import create_model

    model = create_model("mlp", in_channels=1, num_classes=3, input_size=(16, 16))
    learn = Learner(toy_data, model, lr=3e-3, batch_size=32, device="cpu", log=lambda m: None)
    learn.fit_one_cycle(2)
    it = Interpretation.from_learner(learn, "test")
    res = learn.evaluate("test")
    assert len(it.targets) == res["n"] == len(toy_data.test)
    assert int(it.confusion_matrix().sum()) == res["n"]
    assert it.accuracy == pytest.approx(res["accuracy"])
    assert it.loss == pytest.approx(res["loss"], rel=1e-4)
    per_class_recall = [r["recall"] for r in it.per_class()]
    assert per_class_recall == pytest.approx([p["accuracy"] for p in res["per_class"]])
    assert Interpretation.from_learner(learn, "valid").split == "valid"


def _png(path, min_w=100, min_h=100):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert w >= min_w and h >= min_h, (path, w, h)
    return w, h


def test_plots_are_written(interp, tmp_path):
    written = plots.write_interpretation_plots(interp, tmp_path, top=4, per_class=1)
    assert set(written) == {"confusion", "top_losses", "confident_wrong", "confident_right",
                            "uncertain"}  # fmt: skip
    for path in written.values():
        _png(path)
    chosen = plots.grid_indices(interp, top=4, per_class=1)
    assert chosen["top_losses"] == interp.top_losses(4).tolist()
    assert chosen["confident_wrong"] == [1, 4, 7]
    # an empty grid (no mistakes) still makes a picture that says so
    perfect = _interp([0, 1], [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    _png(plots.prediction_grid(perfect, [], tmp_path / "none.png"), min_w=50, min_h=50)


def test_curves_plot(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.2 / e, "accuracy": 0.5 + e / 10,
         "lr": 1e-3}
        for e in (1, 2, 3)
    ]  # fmt: skip
    path = plots.curves_plot(
        history,
        tmp_path / "curves.png",
        batch_losses=[1.0 - i / 40 for i in range(30)],
        batch_lrs=[1e-3] * 30,
        per_epoch=10,
        chance_bits=math.log2(10),
        events=[
            {"event": "divergence", "split": "train", "epoch": 2, "batch": 3},
            {"event": "divergence", "split": "valid", "epoch": 2, "batch": None},
        ],
    )
    w, h = _png(path)
    assert w > h
    # without per-batch data the epoch rows still draw
    _png(plots.curves_plot(history, tmp_path / "epochs.png"))


def test_per_class_grids_are_capped_for_many_classes():
    k = 40
    probs = torch.full((2 * k, k), 0.1 / (k - 1))
    targets = list(range(k)) * 2
    for i, t in enumerate(targets):
        probs[i, t] = 0.9 - i * 0.001  # all correct, confidence falling with i
    it = _interp(targets, probs.tolist(), classes=[f"c{c}" for c in range(k)])
    chosen = plots.grid_indices(it, top=4, per_class=2)
    assert len(chosen["confident_right"]) == 8
    # the surest eight are items 0..7 (classes 0..7), kept in class order
    assert chosen["confident_right"] == list(range(8))
    assert chosen["confident_wrong"] == []
