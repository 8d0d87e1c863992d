"""Freezing, discriminative learning rates, fine_tune, augmentation and TTA in the Learner
and on the command line."""

import json
import math

import pytest
import torch
from torch import nn

from deepstart.cli import main
from deepstart.config import TrainConfig
from deepstart.errors import ConfigError
from deepstart.models.basic import Net
from deepstart.train import finetune
from deepstart.train.learner import Learner


def _net() -> Net:
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
    )
    return Net(body, nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))


class ThreeGroups(Net):
    def layer_groups(self):
        # conv | BatchNorm and the parameter-free rest | head
        return [[self.body[0]], [self.body[1], self.body[2], self.body[3]], [self.classifier]]


def _learner(data, model=None, **kw):
    return Learner(
        data, model or _net(), batch_size=32, device="cpu", log=lambda m: None, guard=False, **kw
    )


def test_lr_scales_follow_fastai():
    assert finetune.lr_scales(3, 1e-3) == (1e-3, [1.0, 1.0, 1.0])
    hi, scales = finetune.lr_scales(3, slice(1e-5, 1e-3))
    assert hi == 1e-3 and scales == pytest.approx([0.01, 0.1, 1.0])
    assert finetune.lr_scales(3, slice(None, 1e-3)) == (1e-3, [0.1, 0.1, 1.0])
    assert finetune.lr_scales(1, slice(1e-5, 1e-3)) == (1e-3, [1.0])
    with pytest.raises(ConfigError):
        finetune.lr_scales(2, slice(1e-3, 1e-5))


def test_freeze_keeps_batchnorm_trainable_and_only_head_learns(toy_data):
    learn = _learner(toy_data)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.freeze()
    learn.fit(1, 1e-2)
    after = learn.model.state_dict()
    assert torch.equal(before["body.0.weight"], after["body.0.weight"])  # conv frozen
    assert not torch.equal(before["body.1.weight"], after["body.1.weight"])  # BN trains
    assert not torch.equal(before["classifier.1.weight"], after["classifier.1.weight"])
    # only trainable parameters are in the optimizer
    in_opt = {id(p) for g in learn.opt.param_groups for p in g["params"]}
    assert id(learn.model.body[0].weight) not in in_opt
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    learn.fit(1, 1e-2)
    assert not torch.equal(before["body.0.weight"], learn.model.state_dict()["body.0.weight"])


def test_slice_gives_each_group_its_lr_and_the_recorder_the_head_lr(toy_data):
    learn = _learner(toy_data, ThreeGroups(_net().body, _net().classifier))
    learn.fit(1, slice(1e-5, 1e-3))  # constant schedule
    lrs = [g["lr"] for g in learn.opt.param_groups]
    assert lrs == pytest.approx([1e-5, 1e-4, 1e-3])
    assert [g["layer_group"] for g in learn.opt.param_groups] == [0, 1, 2]
    assert learn.recorder.history[-1]["lr"] == pytest.approx(1e-3)
    # a plain LR afterwards puts every group back to it, keeping the optimizer state
    opt = learn.opt
    learn.fit(1, 1e-3)
    assert learn.opt is opt
    assert [g["lr"] for g in learn.opt.param_groups] == pytest.approx([1e-3] * 3)


def test_norm_bias_lr_gives_batchnorm_shifts_their_own_faster_group(toy_data):
    learn = _learner(
        toy_data, ThreeGroups(_net().body, _net().classifier), opt="sgd", wd=0.01, norm_bias_lr=64.0
    )
    learn.fit(1, slice(1e-5, 1e-3))
    bn = learn.model.body[1]
    groups = learn.opt.param_groups
    (shift,) = [g for g in groups if any(p is bn.bias for p in g["params"])]
    assert shift["params"] == [bn.bias] and shift["layer_group"] == 1
    assert shift["lr"] == pytest.approx(1e-4 * 64)
    assert shift["lr"] * shift["weight_decay"] == pytest.approx(1e-4 * 0.01)  # same decay
    (scale,) = [g for g in groups if any(p is bn.weight for p in g["params"])]
    assert scale["lr"] == pytest.approx(1e-4) and scale["weight_decay"] == 0.01
    # new LRs keep the multiplier
    learn.fit(1, 1e-3)
    assert shift["lr"] == pytest.approx(1e-3 * 64) and scale["lr"] == pytest.approx(1e-3)
    # 1 (the default) leaves the groups as they were
    plain = _learner(toy_data, ThreeGroups(_net().body, _net().classifier))
    plain.fit(1, 1e-3)
    assert len(plain.opt.param_groups) == 3
    with pytest.raises(ConfigError, match="norm_bias_lr"):
        TrainConfig(norm_bias_lr=0)


def test_one_cycle_with_a_slice_scales_the_whole_schedule(toy_data):
    learn = _learner(toy_data, ThreeGroups(_net().body, _net().classifier))
    seen = []

    from deepstart.train.callbacks import Callback

    class Watch(Callback):
        order = 100

        def after_batch(self):
            seen.append([g["lr"] for g in self.learn.opt.param_groups])

    learn.fit_one_cycle(1, slice(1e-4, 1e-2), callbacks=[Watch()])
    for lrs in seen:
        assert lrs[0] / lrs[2] == pytest.approx(1e-2)
        assert lrs[1] / lrs[2] == pytest.approx(1e-1)
    assert max(r[2] for r in seen) <= 1e-2 + 1e-12


def test_fine_tune_trains_head_first_then_everything(toy_data):
    learn = _learner(toy_data, ThreeGroups(_net().body, _net().classifier))
    conv0 = learn.model.body[0].weight.detach().clone()
    phases = []

    from deepstart.train.callbacks import Callback

    class Phase(Callback):
        order = 100

        def before_fit(self):
            phases.append(
                (
                    self.learn.model.body[0].weight.requires_grad,
                    [g.get("lr_scale") for g in self.learn.opt.param_groups],
                )
            )

    learn.add_callbacks([Phase()])
    learn.fine_tune(2, base_lr=1e-2)
    assert len(learn.recorder.history) == 3  # 1 frozen + 2 unfrozen epochs
    (frozen_grad, _), (unfrozen_grad, scales) = phases
    assert not frozen_grad and unfrozen_grad
    assert scales == pytest.approx([0.01, 0.1, 1.0])  # base_lr/2/100 .. base_lr/2
    assert not torch.equal(conv0, learn.model.body[0].weight)


def test_fine_tune_can_keep_early_groups_frozen_with_their_statistics(toy_data):
    learn = _learner(toy_data, ThreeGroups(_net().body, _net().classifier))
    seen = []

    from deepstart.train.callbacks import Callback

    class Phase(Callback):
        order = 100

        def before_fit(self):
            m = self.learn.model
            seen.append((m.body[0].weight.requires_grad, m.body[1].weight.requires_grad))

    learn.add_callbacks([Phase()])
    conv0 = learn.model.body[0].weight.detach().clone()
    learn.fine_tune(1, base_lr=1e-2, keep_frozen=1)
    # phase 0: head only (BatchNorm trainable); phase 1: group 0 (the conv) still frozen
    assert seen == [(False, True), (False, True)]
    assert torch.equal(conv0, learn.model.body[0].weight)


def test_fine_tune_keep_better_puts_back_the_frozen_phase(toy_data):
    learn = _learner(toy_data, ThreeGroups(_net().body, _net().classifier))
    logs = []
    learn.log = logs.append
    learn.fine_tune(1, base_lr=1e-2, freeze_epochs=2, keep_better=True)
    after_frozen = learn.recorder.history[1]["valid_loss"]
    final = learn.recorder.history[-1]["valid_loss"]
    if final > after_frozen:  # the unfrozen phase made it worse: the frozen weights came back
        assert any("kept the frozen phase's weights" in m for m in logs)
        assert learn.evaluate("valid")["loss"] == pytest.approx(after_frozen, rel=1e-4)

    # A phase that ruins the model is always undone: the head scrambled as it starts.
    learn = _learner(toy_data, ThreeGroups(_net().body, _net().classifier))
    learn.log = logs.append
    frozen_state = {}

    from deepstart.train.callbacks import Callback

    class Scramble(Callback):
        order = 100

        def before_epoch(self):
            if self.learn.phase == 1:
                state = self.learn.model.state_dict()
                frozen_state.update({k: v.clone() for k, v in state.items()})
                torch.manual_seed(1)
                self.learn.model.classifier[1].weight.data.normal_(0.0, 100.0)

    learn.add_callbacks([Scramble()])
    logs.clear()
    learn.fine_tune(1, base_lr=1e-2, keep_better=True)
    assert any("kept the frozen phase's weights" in m for m in logs)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, frozen_state[k]), k


def test_several_frozen_epochs_anneal_the_lr(toy_data):
    learn = _learner(toy_data)
    learn.fine_tune(1, base_lr=1e-2, freeze_epochs=4)
    lrs = [row["lr"] for row in learn.recorder.history[:4]]
    # one-cycle with pct_start 0.3 over the frozen epochs: up, then down to the floor
    assert max(lrs) == lrs[1] and lrs[-1] < lrs[1] / 10


def test_augment_applies_to_training_batches_only(toy_data):
    learn = _learner(toy_data, augment="flip")
    assert learn.batches(toy_data.train, train=True).augment is not None
    assert learn.batches(toy_data.valid).augment is None
    with pytest.raises(ConfigError, match="unknown augmentation"):
        _learner(toy_data, augment="nosuch")
    with pytest.raises(ConfigError, match="unknown augmentation"):
        TrainConfig(augment="nosuch")
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(fine_tune=True, freeze=True)


def test_cli_augment_tta_and_fine_tune(tmp_path):
    out = tmp_path / "runs"
    args = ["train", "--data", "shapes", "--data-opt", "n_train=300", "--data-opt", "n_test=90"]
    args += ["--size", "16", "--model", "vgg_small", "--epochs", "1", "--batch-size", "32"]
    args += ["--out", str(out), "--progress", "plain", "--no-report"]
    assert main([*args, "--augment", "digits", "--tta", "--fine-tune"]) == 0
    (run_dir,) = out.iterdir()
    cfg = json.loads((run_dir / "config.json").read_text())["train"]
    assert cfg["augment"] == "digits" and cfg["tta"] and cfg["fine_tune"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_tta"]["n"] == results["test"]["n"] == 90
    assert 0 <= results["test_tta"]["accuracy"] <= 1
    assert math.isfinite(results["test_tta"]["loss"])
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2  # the frozen epoch, then the unfrozen one


def test_cli_pretrained_from_a_run_directory(tmp_path, capsys):
    """Train on three shapes, then fine-tune those weights on two others: the body loads, the
    head is replaced for the new classes, and the old run's normalisation is used."""
    base = ["train", "--data", "shapes", "--data-opt", "n_train=240", "--data-opt", "n_test=60"]
    base += ["--size", "16", "--model", "vgg_small", "--epochs", "1", "--batch-size", "32"]
    base += ["--progress", "plain", "--no-report"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    (first,) = (tmp_path / "a").iterdir()
    capsys.readouterr()
    new_classes = ["--data-opt", "classes=star,circle"]
    args = [*base, *new_classes, "--out", str(tmp_path / "b"), "--pretrained", str(first)]
    assert main([*args, "--fine-tune"]) == 0
    out = capsys.readouterr().out
    assert "head" in out  # the report says the head was kept new
    (second,) = (tmp_path / "b").iterdir()
    old = json.loads((first / "model.json").read_text())["preprocess"]
    new = json.loads((second / "model.json").read_text())["preprocess"]
    assert new["mean"] == old["mean"] and new["std"] == old["std"]
    assert json.loads((second / "model.json").read_text())["classes"] == ["star", "circle"]
    bad = [*base, "--out", str(tmp_path / "c"), "--pretrained", str(tmp_path / "nothing.pth")]
    assert main(bad) == 2


def test_stem_freeze_stops_the_stem_after_its_epochs_and_the_backward_before_block_one(toy_data):
    from deepstart.models.registry import create_model
    from deepstart.train.events import Callback

    torch.manual_seed(0)
    model = create_model(
        "fast_cifar", in_channels=1, num_classes=3, input_size=(16, 16), widths=[8, 8, 8, 8]
    )
    bias = model.stem_layers()[0].bias  # the whitening's, its only parameter
    ends = []  # the stem's bias at the end of each epoch

    class Watch(Callback):
        def after_epoch(self):
            ends.append(bias.detach().clone())

    asked = []  # per training batch: does block 1's input want a gradient?
    block_one = model.body[1][0]
    block_one.register_forward_hook(
        lambda m, i, o: asked.append(i[0].requires_grad) if m.training else None
    )
    learn = Learner(toy_data, model, batch_size=32, lr=5e-3, seed=0, log=lambda m: None)
    learn.fit_one_cycle(3, callbacks=[finetune.StemFreeze(1), Watch()])
    assert bias.abs().sum() > 0  # it learned in epoch 1 (it starts at zero)...
    assert torch.equal(ends[1], ends[0]) and torch.equal(ends[2], ends[0])  # ...then no more
    per_epoch = len(asked) // 3
    assert asked == [True] * per_epoch + [False] * 2 * per_epoch
    assert bias.requires_grad  # as the fit found it, for the next fit


def test_stem_epochs_needs_a_model_with_a_stem(toy_data):
    learn = Learner(toy_data, _net(), batch_size=32, lr=1e-3, seed=0, log=lambda m: None)
    with pytest.raises(ConfigError, match="no stem"):
        learn.fit(1, callbacks=[finetune.StemFreeze(1)])
    with pytest.raises(ConfigError, match="stem_epochs"):
        TrainConfig(stem_epochs=-1)
