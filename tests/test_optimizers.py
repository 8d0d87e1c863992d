"""Optimizers by name: RMSprop with Keras's rho and epsilon trains, every name the config
offers is one the Learner builds, and a name it does not know fails when the Learner is
built, with the names it knows."""

from __future__ import annotations

import pytest
import torch

from deepstart.config import TrainConfig
from deepstart.config.training import OPTIMIZERS
from deepstart.errors import ConfigError
from deepstart.models.registry import create_model
from deepstart.train.learner import Learner
from deepstart.train.optim import OPTIMIZER_NAMES, make_optimizer


def _model(data):
    torch.manual_seed(0)
    return create_model("logreg", in_channels=1, num_classes=3, input_size=data.size)


def test_rmsprop_has_keras_defaults_and_takes_momentum():
    params = [torch.zeros(2, requires_grad=True)]
    opt = make_optimizer("rmsprop", params, lr=1e-3, wd=0.0, momentum=0.0)
    assert isinstance(opt, torch.optim.RMSprop)
    group = opt.param_groups[0]
    assert (group["alpha"], group["eps"], group["momentum"]) == (0.9, 1e-7, 0.0)
    assert make_optimizer("rmsprop", params, lr=1e-3, momentum=0.5).param_groups[0]["momentum"]


def test_rmsprop_trains_a_little(toy_data):
    learn = Learner(
        toy_data, _model(toy_data), opt="rmsprop", lr=1e-3, momentum=0.0, wd=0.0,
        batch_size=32, device="cpu", log=lambda m: None,
    )  # fmt: skip
    before = learn.evaluate("valid")["loss"]
    learn.fit(2)
    assert isinstance(learn.opt, torch.optim.RMSprop)
    after = learn.evaluate("valid")
    assert after["loss"] < before - 0.1 and after["accuracy"] > 0.6  # chance is 1/3


def test_an_unknown_optimizer_fails_when_the_learner_is_built(toy_data):
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprob'; use sgd, adam, adamw, "
                       "rmsprop, lbfgs"):  # fmt: skip
        Learner(toy_data, _model(toy_data), opt="rmsprob", device="cpu")


def test_every_optimizer_the_config_offers_is_built():
    assert set(OPTIMIZERS) <= set(OPTIMIZER_NAMES) and "rmsprop" in OPTIMIZERS
    assert TrainConfig(opt="rmsprop").opt == "rmsprop"
    params = [torch.zeros(1, requires_grad=True)]
    for name in OPTIMIZER_NAMES:
        assert isinstance(make_optimizer(name, params, lr=0.1), torch.optim.Optimizer)


def test_one_cycle_keeps_a_low_momentum_as_asked():
    from deepstart.train.optim import cycle_momentums

    assert cycle_momentums(0.0) == (0.0, 0.0, 0.0)  # the notes' plain SGD stays plain
    assert cycle_momentums(0.5) == (0.5, 0.5, 0.5)
    assert cycle_momentums(0.95) == (0.95, 0.85, 0.95)  # fastai's cycle
    assert cycle_momentums(0.9) == (0.9, 0.85, 0.9)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_sgd_and_adam_on_the_cpu_are_fused_and_step_as_the_per_tensor_loop_does(name):
    torch.manual_seed(0)
    w = torch.randn(3, 5)
    weights = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())]
    fused = make_optimizer(name, [{"params": [weights[0]]}], lr=0.1, wd=1e-2, nesterov=True)
    assert fused.defaults["fused"] is True
    settings = {**fused.defaults, "fused": None, "foreach": False}
    settings.pop("decoupled_weight_decay", None)  # AdamW's, implied by its class
    loop = type(fused)([weights[1]], **settings)
    for _ in range(5):
        grad = torch.randn(3, 5)
        for p, opt in zip(weights, (fused, loop)):
            p.grad = grad.clone()
            opt.step()
    assert not torch.equal(weights[0], w)
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)


def test_fused_kernels_only_where_pytorch_has_them():
    from deepstart.train.optim import fusable

    assert fusable([torch.zeros(2, requires_grad=True)]) is True
    assert fusable([{"params": [torch.zeros(2, device="meta", requires_grad=True)]}]) is None
    assert fusable([]) is None
    assert fusable([{"params": torch.zeros(2, 3, requires_grad=True)}]) is True  # one tensor


def test_a_param_group_of_a_generator_keeps_its_parameters():
    w = torch.nn.Parameter(torch.ones(3))
    for group in ({"params": (p for p in [w])}, {"params": w}):
        opt = make_optimizer("adam", [group], lr=0.1)
        assert opt.param_groups[0]["params"] == [w] and opt.defaults["fused"] is True
    sgd = make_optimizer("sgd", [torch.zeros(2, device="meta", requires_grad=True)], lr=0.1)
    assert not sgd.defaults["fused"]  # built without the flag there
