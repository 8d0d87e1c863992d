"""Progressive resizing: the first epochs train on smaller images, everything else at full size."""

import pytest
import torch

from deepstart.config import TrainConfig
from deepstart.errors import ConfigError
from deepstart.models.registry import create_model
from deepstart.train.learner import Learner
from deepstart.train.progressive import ProgressiveResize, small_size


def _fast_net():
    torch.manual_seed(0)
    return create_model(
        "fast_cifar", in_channels=1, num_classes=3, input_size=(16, 16), widths=[8, 8, 8, 8]
    )


def test_small_size_rounds_each_side_and_keeps_one_pixel():
    assert small_size(32, 32, 0.75) == (24, 24)
    assert small_size(28, 20, 0.5) == (14, 10)
    assert small_size(3, 3, 0.1) == (1, 1)


def test_the_first_epochs_train_small_and_the_rest_sees_the_full_size(toy_data):
    model = _fast_net()
    learn = Learner(toy_data, model, batch_size=32, lr=5e-3, seed=0, log=lambda m: None)
    seen = []  # (epoch, training?, (H, W)) of every batch the model's forward gets
    model.register_forward_pre_hook(
        lambda m, args: seen.append((learn.epoch, m.training, tuple(args[0].shape[-2:])))
    )
    learn.fit_one_cycle(3, callbacks=[ProgressiveResize(2, 0.75)])
    full = (16, 16)  # the bars' size
    small = small_size(*full, 0.75)
    trained = {e: {size for ep, t, size in seen if t and ep == e} for e in range(3)}
    assert trained == {0: {small}, 1: {small}, 2: {full}}
    # In eval mode: the one-image check of the small size, once, then validation at full size.
    evaluated = [size for _, t, size in seen if not t]
    assert evaluated[0] == small and set(evaluated[1:]) == {full}


def test_with_fine_tune_only_the_unfrozen_phase_starts_small(toy_data):
    from deepstart.run.options import option_callbacks

    model = _fast_net()
    learn = Learner(toy_data, model, batch_size=32, lr=5e-3, seed=0, log=lambda m: None)
    sizes = {}  # (phase, epoch) -> the (H, W)s of the training batches the model's forward gets

    def record(m, args):
        if m.training:
            sizes.setdefault((learn.phase, learn.epoch), set()).add(tuple(args[0].shape[-2:]))

    model.register_forward_pre_hook(record)
    # What a run with --fine-tune --epochs 2 --small-epochs 1 adds:
    cfg = TrainConfig(fine_tune=True, epochs=2, small_epochs=1)
    (resize,) = [cb for cb in option_callbacks(cfg, print) if isinstance(cb, ProgressiveResize)]
    learn.add_callbacks([resize])
    learn.fine_tune(2, base_lr=1e-2, freeze_epochs=1)
    full, small = (16, 16), small_size(16, 16, 0.75)
    # the head alone at the full size, as on cached features; then the first unfrozen epoch
    assert sizes == {(0, 0): {full}, (1, 0): {small}, (1, 1): {full}}
    assert resize.epoch_cost(0) == 0.75**2  # (phase 1 now) what the estimate weighs by


def test_a_net_that_needs_its_size_is_refused_before_it_trains(toy_data):
    from deepstart.models.basic import Net

    torch.manual_seed(0)
    flat = Net(
        torch.nn.Identity(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 3))
    )
    before = {k: v.clone() for k, v in flat.state_dict().items()}
    learn = Learner(toy_data, flat, batch_size=32, lr=5e-3, seed=0, log=lambda m: None)
    with pytest.raises(ConfigError, match=r"cannot train on 12x12 images.*any size"):
        learn.fit(2, callbacks=[ProgressiveResize(1, 0.75)])
    after = flat.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step was taken


def test_the_options_are_checked_where_they_are_given():
    assert TrainConfig(epochs=7, small_epochs=4).small_scale == 0.75
    for bad, match in [
        ({"small_epochs": -1}, "small_epochs must be >= 0"),
        ({"small_epochs": 5, "epochs": 5}, "must leave epochs at the full size"),
        ({"small_scale": 1.0}, r"small_scale must be in \(0, 1\)"),
        ({"small_scale": 0.0}, r"small_scale must be in \(0, 1\)"),
        ({"small_scale": float("nan")}, r"small_scale must be in \(0, 1\)"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="small_scale"):
        ProgressiveResize(1, 1.5)
