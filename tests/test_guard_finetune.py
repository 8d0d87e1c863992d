"""The divergence guard with pretrained weights: fine-tuning LRs, and fine_tune's phases."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepstart.models.registry import create_model
from deepstart.run.runner import load_run_config, train_run
from deepstart.train.callbacks import Checkpoint, load_checkpoint, restore_checkpoint
from deepstart.train.guard import DivergenceGuard
from deepstart.train.learner import Learner
from tests.test_precompute import KillAfter, Killed, fine_tune_config


def _learn(data, opt, pretrained, lines, **kw):
    torch.manual_seed(0)
    model = create_model(
        "mnist_cnn", in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )
    model.pretrained_from = pretrained  # as load_pretrained records it
    guard = DivergenceGuard(log=lines.append)
    learn = Learner(
        data, model, opt=opt, batch_size=16, seed=0, guard=False, callbacks=[guard],
        log=lines.append, quiet=True, **kw,
    )  # fmt: skip
    return learn, guard


def test_pretrained_weights_that_train_go_a_decade_below_the_sweep(toy_data):
    """The same sweep from the same state: with pretrained weights training, the LR is a tenth
    of the one a net trained from scratch goes on with."""
    scratch, pretrained = [], []
    learn, guard = _learn(toy_data, "sgd", None, scratch)
    learn.fit_one_cycle(1, 1e3)
    tuned, tuned_guard = _learn(toy_data, "sgd", "weights.safetensors", pretrained)
    tuned.fit_one_cycle(1, 1e3)
    first, tuned_first = guard.events[0], tuned_guard.events[0]
    assert first["how"] == "swept" and tuned_first["how"] == "swept, fine-tuning"
    assert (tuned_first["batch"], tuned_first["old_lr"]) == (first["batch"], first["old_lr"])
    assert tuned_first["new_lr"] == pytest.approx(first["new_lr"] / 10, rel=1e-12)
    assert "a tenth of the sweep's (pretrained weights train" in pretrained[0]
    assert not tuned_guard.gave_up


def test_adam_far_too_high_on_pretrained_weights_is_swept_not_capped(toy_data):
    """The cap (a tenth of the weights' size) is a prior for training from scratch: for an
    ImageNet body it was 30x the LR that fine-tunes it. Pretrained weights are swept."""
    lines = []
    learn, guard = _learn(toy_data, "adam", "imagenet", lines)
    learn.fit_one_cycle(2, 30.0)
    assert guard.events[0]["how"] == "swept, fine-tuning", lines
    assert "capped" not in [e["how"] for e in guard.events]
    assert not guard.gave_up and learn.evaluate()["accuracy"] >= 0.9, lines


def test_the_frozen_phase_trains_a_new_head_as_from_scratch(toy_data):
    """Only the new head trains (the body frozen): nothing pretrained learns, so Adam far too
    high goes to the cap as for any net trained from scratch."""
    lines = []
    learn, guard = _learn(toy_data, "adam", "imagenet", lines)
    learn.freeze()
    learn.fit_one_cycle(1, 30.0)
    assert guard.events[0]["how"] == "capped", lines


def test_pretrained_batchnorm_that_trains_counts_as_fine_tuning():
    """fine_tune's frozen phase trains the body's BatchNorm scales and shifts (fastai's
    train_bn): they are pretrained, so the guard treats that phase as fine-tuning. With the
    BatchNorm frozen too, or weights from scratch, only a new head trains."""
    from deepstart.train.finetune import freeze, unfreeze
    from deepstart.train.lr_probe import fine_tuning

    net = create_model("vgg_small", in_channels=1, num_classes=3, input_size=(16, 16))
    freeze(net)
    assert not fine_tuning(net)  # random weights: nothing pretrained trains
    net.pretrained_from = "imagenet"
    assert fine_tuning(net)  # the body's BatchNorm layers train
    convs = [p for p in net.body.parameters() if p.dim() == 4]
    assert convs and not any(p.requires_grad for p in convs)
    freeze(net, train_bn=False)
    assert not fine_tuning(net)  # only the head
    unfreeze(net)
    assert fine_tuning(net)


def test_a_head_on_cached_features_is_trained_as_from_scratch(toy_data):
    """With cached features (the photos recipe's frozen phase) only the head learns, though
    the body's BatchNorm layers still require grad: Adam far too high goes to the cap."""
    lines = []
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=3, input_size=(16, 16))
    model.pretrained_from = "imagenet"
    guard = DivergenceGuard(log=lines.append)
    learn = Learner(
        toy_data, model, opt="adam", batch_size=16, seed=0, guard=False, callbacks=[guard],
        log=lines.append, quiet=True, precompute=True,
    )  # fmt: skip
    learn.freeze()
    learn.fit_one_cycle(1, 30.0)
    assert lines[0].startswith("precompute: body features")  # the head trained on the cache
    assert guard.events[0]["how"] == "capped", lines


def _frozen_phase(data, tmp_path=None, lines=None):
    """fine_tune's first phase by hand: Adam far too high with the body frozen, which the guard
    caps for the head (checkpoints into ``tmp_path`` when given). Returns the learner and its
    guard; the tests run the unfrozen phase."""
    lines = [] if lines is None else lines
    cbs = [Checkpoint(tmp_path)] if tmp_path is not None else []
    learn, guard = _learn(data, "adam", "imagenet", lines)
    learn.add_callbacks(cbs)
    learn.freeze()
    learn.fit_one_cycle(1, 30.0)
    return learn, guard


def test_an_lr_lowered_for_the_head_alone_is_undone_when_the_body_unfreezes(toy_data):
    """fine_tune's frozen phase finds an LR for the head alone (SGD took 25x what the unfrozen
    ImageNet body does). When other weights train, the fit starts at its planned LR again."""
    lines = []
    learn, guard = _frozen_phase(toy_data, lines=lines)
    lowered = learn.lr_mult
    assert guard.events[0]["how"] == "capped" and lowered < 1e-2
    learn.fit_one_cycle(1, 1e-3)  # the same weights train: the lowered LR holds
    assert learn.lr_mult == lowered and not any("planned LR" in s for s in lines)
    learn.unfreeze()
    learn.fit_one_cycle(1, 1e-3)
    assert learn.lr_mult == pytest.approx(1.0)
    assert max(learn.recorder.batch_lrs[-learn.n_iter :]) == pytest.approx(1e-3, rel=1e-6)
    assert any("other weights train now: back to the planned LR" in s for s in lines)
    assert len(guard.events) == 1  # 1e-3 trains the whole net without diverging


def test_a_resumed_run_undoes_the_frozen_phases_lr_as_an_uninterrupted_one(toy_data, tmp_path):
    """The guard's part of lr_mult is in the checkpoint: a run resumed after the frozen phase
    starts the unfrozen one at the planned LR too, not at the head's."""
    learn, _ = _frozen_phase(toy_data, tmp_path / "ck")
    ckpt = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert "DivergenceGuard" in ckpt["callbacks"]

    again, again_guard = _learn(toy_data, "adam", "imagenet", [])
    again.freeze()  # as when the checkpoint was saved
    restore_checkpoint(again, ckpt)
    assert again.lr_mult == learn.lr_mult < 1e-2
    again.unfreeze()
    again.fit_one_cycle(1, 1e-3)
    assert again.lr_mult == pytest.approx(1.0)
    assert not again_guard.events


def test_a_pretrained_run_at_a_mad_lr_resumes_to_the_uninterrupted_result(tmp_path):
    """`deepstart train --pretrained FILE --fine-tune --lr 30`: the guard lowers the LR in the
    frozen phase, undoes that at the unfreeze and lowers it again for the whole net; a run
    killed after the frozen phase and resumed does all of that as the uninterrupted run."""
    torch.manual_seed(1)
    net = create_model("vgg_small", in_channels=1, num_classes=3, input_size=(16, 16))
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))  # weights "from elsewhere"

    def config(out):
        return fine_tune_config(out, lr=30.0, pretrained=str(tmp_path / "w.safetensors"))

    ref = train_run(config(tmp_path / "ref"), quiet=True)
    rows = [json.loads(line) for line in (ref.run_dir / "metrics.jsonl").open()]
    hows = [r["how"] for r in rows if r.get("event") == "divergence"]
    # The frozen phase trains pretrained BatchNorm layers: fine-tuning from the start.
    assert len(hows) >= 2 and set(hows) == {"swept, fine-tuning"}, hows
    phases = [r["phase"] for r in rows if r.get("event") == "divergence"]
    assert phases[0] == 0 and phases[-1] == 1, phases  # lowered in each phase
    with pytest.raises(Killed):
        # killed once the frozen phase's one epoch is saved
        train_run(config(tmp_path / "killed"), quiet=True, callbacks=[KillAfter(0, 0)])
    (run_dir,) = (tmp_path / "killed").iterdir()
    res = train_run(load_run_config(run_dir), resume=run_dir, quiet=True)
    assert [h["train_loss"] for h in res.history] == [h["train_loss"] for h in ref.history]
    want, got = (load_file(str(d / "model.safetensors")) for d in (ref.run_dir, run_dir))
    assert all(torch.equal(want[k], got[k]) for k in want)
