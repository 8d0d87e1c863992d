"""The speed layers (models/layers.py), channels-last batches and the device's layout choice:
each must compute what the plain PyTorch version computes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.data.dataset import to_channels_last
from deepstart.device import busy_cpu_note, running_elsewhere, use_channels_last
from deepstart.models.layers import Dropout, Flatten, dropout_mask
from deepstart.models.registry import create_model
from deepstart.train.learner import Learner

CL = torch.channels_last


# --- dropout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_dropout_mask_keeps_1_minus_p_and_scales_exactly(p):
    torch.manual_seed(0)
    m = dropout_mask(torch.empty(400_000), p)
    kept = (m > 0).float().mean().item()
    # 400k Bernoulli draws: the standard error is under 8e-4; 5 of them is a real failure.
    assert abs(kept - (1 - p)) < 5 * ((p * (1 - p)) / 400_000) ** 0.5 + 1e-5
    values = m.unique()
    assert values[0] == 0 and len(values) == 2
    assert values[1].item() == pytest.approx(1 / (1 - p), rel=1e-7)


def test_dropout_mask_draws_are_independent_across_the_four_slices_of_a_word():
    # Each 64-bit draw decides four neighbours; none of the four may be biased or tied.
    torch.manual_seed(1)
    m = (dropout_mask(torch.empty(400_000), 0.5) > 0).float().view(-1, 4)
    assert torch.allclose(m.mean(0), torch.full((4,), 0.5), atol=0.01)
    both = (m[:, 0] * m[:, 1]).mean().item()
    assert abs(both - 0.25) < 0.01  # neighbours are independent, not equal


def test_dropout_mask_follows_the_layout_dtype_and_seed():
    x = torch.randn(8, 16, 5, 5).contiguous(memory_format=CL).to(torch.bfloat16)
    torch.manual_seed(3)
    a = dropout_mask(x, 0.25)
    torch.manual_seed(3)
    b = dropout_mask(x, 0.25)
    assert a.dtype == torch.bfloat16 and a.is_contiguous(memory_format=CL)
    assert torch.equal(a, b)
    # A non-dense input (a strided view) still gets a full, dense mask of its shape.
    view = torch.randn(8, 32)[:, ::2]
    assert dropout_mask(view, 0.5).shape == view.shape


def test_dropout_module_is_nn_dropout_and_trains_like_it():
    drop = Dropout(0.25)
    assert isinstance(drop, nn.Dropout)
    x = torch.randn(64, 32, requires_grad=True)
    drop.eval()
    assert drop(x) is x
    drop.train()
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    # The gradient is the mask: 1/(1-p) where kept, 0 where dropped.
    assert torch.allclose(x.grad, kept.float() / 0.75)
    assert torch.equal(Dropout(0.0).train()(x), x) and not Dropout(1.0).train()(x).any()


def test_dropout_inplace_changes_the_input():
    x = torch.ones(100, 100)
    out = Dropout(0.5, inplace=True).train()(x)
    assert out.data_ptr() == x.data_ptr() and (x == 0).any()


# --- flatten and channels-last ------------------------------------------------------------------


def test_to_channels_last_restrides_even_one_channel():
    x = torch.randn(2, 1, 6, 5)
    y = to_channels_last(x)
    assert y.stride() == (30, 1, 5, 1) and torch.equal(x, y)
    rgb = to_channels_last(torch.randn(2, 3, 4, 4))
    assert rgb.is_contiguous(memory_format=CL)
    assert to_channels_last(rgb) is rgb  # already NHWC: no copy


def test_flatten_gives_the_usual_order_and_a_channels_last_gradient():
    x = torch.randn(3, 8, 4, 5)
    x_cl = x.contiguous(memory_format=CL).requires_grad_()
    out = Flatten()(x_cl)
    assert torch.equal(out, x.flatten(1))  # (C, H, W) order whatever the layout
    w = torch.randn(out.shape[1])
    (out * w).sum().backward()
    assert x_cl.grad.is_contiguous(memory_format=CL)
    assert torch.equal(x_cl.grad, w.view(1, 8, 4, 5).expand(3, -1, -1, -1))
    assert isinstance(Flatten(), nn.Flatten)


def test_the_reordered_keras_blocks_equal_conv_relu_pool():
    """mnist_cnn pools before its ReLU: the outputs and every gradient must equal the
    Keras order (conv-ReLU-pool) exactly."""
    torch.manual_seed(0)
    net = create_model("mnist_cnn").eval()
    body = net.body
    keras_order = nn.Sequential(body[0], body[1], body[2], nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randn(16, 1, 28, 28)
    ours = body[:5](x)
    assert torch.equal(ours, keras_order(x))
    grads = []
    for f in (body[:5], keras_order):
        net.zero_grad()
        f(x).square().sum().backward()
        grads.append([p.grad.clone() for p in net.body.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


# --- the device's choice and the learner --------------------------------------------------------


def test_channels_last_is_chosen_for_conv_nets_on_the_cpu_and_under_cuda_autocast():
    conv, mlp = create_model("mnist_cnn"), create_model("mlp")
    cpu, cuda, mps = (torch.device(d) for d in ("cpu", "cuda", "mps"))
    assert use_channels_last(conv, cpu, None) and use_channels_last(conv, cpu, torch.bfloat16)
    assert not use_channels_last(mlp, cpu, None)
    assert use_channels_last(conv, cuda, torch.float16)
    assert not use_channels_last(conv, cuda, None)
    assert not use_channels_last(conv, mps, None)


def _fit(data, channels_last):
    torch.manual_seed(0)
    model = create_model("vgg_small", in_channels=1, num_classes=3, input_size=(16, 16))
    learn = Learner(
        data,
        model,
        device="cpu",
        precision="fp32",
        batch_size=16,
        log=lambda m: None,
        channels_last=channels_last,
    )
    learn.fit(1)
    return learn


def test_the_learner_feeds_channels_last_batches_and_trains_the_same(toy_data):
    shapes = toy_data
    nhwc, nchw = _fit(shapes, None), _fit(shapes, False)
    assert nhwc.channels_last and not nchw.channels_last
    xb, _ = next(iter(nhwc.batches(shapes.train, train=True)))
    assert xb.stride(1) == 1
    # Only the speed changes: the convolutions sum in another order, nothing else differs.
    for a, b in zip(nhwc.recorder.batch_losses, nchw.recorder.batch_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    for (name, a), b in zip(nhwc.model.state_dict().items(), nchw.model.state_dict().values()):
        assert a.is_contiguous(), name  # the weights keep their usual layout (safetensors)
        assert torch.allclose(a, b, atol=1e-4), name
    assert F.mse_loss(nhwc.get_preds(shapes.test)[0], nchw.get_preds(shapes.test)[0]) < 1e-8


def test_a_busy_cpu_gets_the_fewer_threads_tip(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    cpu = torch.device("cpu")
    note = busy_cpu_note(cpu, others=1, cores=2, threads=2)
    assert "1 other thread running on 2 cores" in note and "OMP_NUM_THREADS=1 " in note
    assert "OMP_NUM_THREADS=3 " in busy_cpu_note(cpu, others=5, cores=8, threads=8)
    assert "OMP_NUM_THREADS=1 " in busy_cpu_note(cpu, others=4, cores=2, threads=2)
    assert busy_cpu_note(cpu, others=0, cores=2, threads=2) is None  # quiet
    assert busy_cpu_note(cpu, others=3, cores=8, threads=4) is None  # free cores left
    assert busy_cpu_note(cpu, others=1, cores=2, threads=1) is None  # nothing to wait for
    assert busy_cpu_note(torch.device("cuda"), others=9, cores=2, threads=2) is None
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # already set: nothing to say
    assert busy_cpu_note(cpu, others=1, cores=2, threads=2) is None


def test_running_elsewhere_sees_a_busy_process():
    if running_elsewhere(samples=1) is None:
        pytest.skip("no /proc/loadavg here")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        assert running_elsewhere() >= 1
    finally:
        spin.kill()
        spin.wait()
