"""Layer specs, Sequential and `deepstart models show`: parsing, errors that point at the bad
token, shapes/parameters/FLOPs against hand-computed numbers, and the model contract."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deepstart.cli import main
from deepstart.data.catalog import load_dataset
from deepstart.data.dataset import Preprocess
from deepstart.interpret.vision import grad_cam
from deepstart.models.registry import (
    count_parameters,
    create_model,
    create_model_from_arch,
    get_model_info,
    list_models,
)
from deepstart.models.sequential import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Pool,
    Residual,
    Sequential,
    to_spec,
)
from deepstart.models.spec import ResBlock, SpecError, build_spec, is_spec, parse_spec
from deepstart.models.summary import count_macs, summarize
from deepstart.ship.bundle import load_bundle, load_model, save_model

# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "kind", "args"),
    [
        ("conv32", "conv", {"width": 32, "kernel": 3, "stride": 1, "padding": 1}),
        ("conv16k5s2p0", "conv", {"width": 16, "kernel": 5, "stride": 2, "padding": 0}),
        ("conv8p3k7", "conv", {"width": 8, "kernel": 7, "stride": 1, "padding": 3}),
        ("res64", "res", {"width": 64, "stride": 1}),
        ("res64s2", "res", {"width": 64, "stride": 2}),
        ("pool", "pool", {"size": 2, "stride": 2}),
        ("pool3", "pool", {"size": 3, "stride": 3}),
        ("pool3s2", "pool", {"size": 3, "stride": 2}),
        ("maxpool", "pool", {"size": 2, "stride": 2}),
        ("avgpool", "avgpool", {"size": 2, "stride": 2}),
        ("avgpool3s1", "avgpool", {"size": 3, "stride": 1}),
        ("drop.25", "drop", {"p": 0.25}),
        ("drop0.5", "drop", {"p": 0.5}),
        ("drop0", "drop", {"p": 0.0}),
        ("flat", "flat", {}),
        ("gap", "gap", {}),
        ("bn", "bn", {}),
        ("dense256", "dense", {"width": 256}),
        ("relu", "act", {"name": "relu"}),
        ("gelu", "act", {"name": "gelu"}),
        ("silu", "act", {"name": "silu"}),
        ("tanh", "act", {"name": "tanh"}),
        ("linear", "act", {"name": "linear"}),
    ],
)
def test_every_token_kind_parses(token, kind, args):
    (tok,) = parse_spec(token)
    assert (tok.kind, tok.text, tok.start, tok.args) == (kind, token, 0, args)


def test_tokens_know_where_they_start():
    tokens = parse_spec("conv32-pool-drop.25-flat")
    assert [(t.text, t.start) for t in tokens] == [
        ("conv32", 0),
        ("pool", 7),
        ("drop.25", 12),
        ("flat", 20),
    ]


def _caret(err: SpecError) -> tuple[str, str]:
    """The spec line and the token the caret line marks."""
    *_, spec_line, marks = str(err).split("\n")
    spec = spec_line[2:]
    start = marks.index("^") - 2
    return spec, spec[start : start + marks.count("^")]


@pytest.mark.parametrize(
    ("spec", "bad", "message"),
    [
        ("conv32-pool-dense64-flat", "dense64", "dense64 needs a vector"),
        ("conv32-flat-conv16-flat", "conv16", "conv16 needs a feature map"),
        ("conv32-flat-gap", "gap", "gap needs a feature map"),
        ("conv32-flat-flat", "flat", "flat needs a feature map"),
        ("conv32-pool-blob-flat", "blob", "unknown layer 'blob'"),
        ("conv32x-flat", "conv32x", "conv options are k"),
        ("conv-flat", "conv", "conv is written like conv32"),
        ("conv32-pooling-flat", "pooling", "pool is written like"),
        ("conv32-drop2-flat", "drop2", "must be in [0, 1)"),
        ("conv32-drop-flat", "drop", "drop needs a probability"),
        ("conv32-dense-flat", "dense", "dense is written like dense128"),
        ("conv0-flat", "conv0", "conv width must be at least 1"),
        ("conv8k3k5-flat", "conv8k3k5", "given twice"),
        ("conv8-pool0-flat", "pool0", "pool size must be at least 1"),
        ("conv8--flat", "", "empty layer"),
        ("conv8-pool4-pool3-flat", "pool3", "input is too small"),
        ("conv8k9p0-flat", "conv8k9p0", "turns the 8x8 map into 0x0"),
    ],
)
def test_bad_specs_point_at_the_bad_token(spec, bad, message):
    with pytest.raises(SpecError) as e:
        create_model(spec, input_size=(8, 8))
    assert message in str(e.value)
    shown, marked = _caret(e.value)
    assert shown == spec
    if bad:
        assert marked == bad
    else:  # the empty token between "--": the caret sits right after the first "-"
        assert e.value.start == spec.index("--") + 1


def test_a_spec_ending_on_a_feature_map_points_past_its_end():
    with pytest.raises(SpecError, match="end it with flat or gap") as e:
        create_model("conv8-pool", input_size=(8, 8))
    assert e.value.start == len("conv8-pool")
    assert str(e.value).split("\n")[-1] == "  " + " " * len("conv8-pool") + "^"


def test_unknown_single_words_are_unknown_models_not_specs():
    assert is_spec("conv32-pool-flat") and is_spec("flat") and is_spec("conv8-oops")
    assert not is_spec("vgg_smal")
    with pytest.raises(Exception, match=r"unknown model 'vgg_smal'.*layer spec"):
        create_model("vgg_smal")


# --- what gets built ----------------------------------------------------------------------


def _types(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module]


def test_body_ends_at_the_feature_map_and_the_head_starts_at_flat():
    net = create_model("conv8-bn-pool-conv16-gelu-flat-dense12-bn-drop.5", input_size=(8, 8))
    assert _types(net.body) == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d", "GELU"]
    assert _types(net.classifier) == [
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    # A BatchNorm right after a layer makes its bias redundant; no bn keeps it.
    assert net.body[0].bias is None and net.body[4].bias is not None
    assert net.classifier[1].bias is None
    assert net.features(torch.zeros(2, 1, 8, 8)).shape == (2, 16, 4, 4)


def test_default_activation_option_and_linear():
    net = create_model("conv8-linear-gap-dense4-drop.1", activation="silu", input_size=(8, 8))
    assert _types(net.body) == ["Conv2d"]  # `linear` removed the default after the conv
    assert _types(net.classifier) == [
        *("AdaptiveAvgPool2d", "Flatten", "Linear", "SiLU", "Dropout", "Linear"),
    ]
    with pytest.raises(Exception, match="activation must be one of"):
        create_model("conv8-gap", activation="swish")


def test_dense_only_spec_is_an_mlp_whose_features_are_the_last_hidden_layer():
    net = create_model("flat-dense32-drop.2-dense16", input_size=(8, 8))
    # No ReLU after the last dense16: the spec ends there and writes none (dense16-relu would).
    assert _types(net.body) == ["Flatten", "Linear", "ReLU", "Dropout", "Linear"]
    assert _types(net.classifier) == ["Linear"]
    assert net.features(torch.zeros(3, 1, 8, 8)).shape == (3, 16)


def test_residual_block_shortcuts():
    net = create_model("conv8-res8-res16s2-gap", input_size=(8, 8))
    same, down = net.body[2], net.body[3]
    assert isinstance(same, ResBlock) and isinstance(same.shortcut, nn.Identity)
    assert isinstance(down.shortcut, nn.Sequential)  # 1x1 conv + BN: 8 -> 16 channels, /2
    assert net.features(torch.zeros(1, 1, 8, 8)).shape == (1, 16, 4, 4)
    # The block really adds its input: zero both convs' BN scales and it passes x through.
    block = same.eval()
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
        x = torch.rand(1, 8, 4, 4)
        assert torch.equal(block(x), torch.relu(x))


def test_shapes_params_and_flops_match_hand_computed_numbers():
    # 1x12x12 -> conv8 (no bias: bn follows) 8x12x12 -> pool 8x6x6 -> conv16k3p0 16x4x4
    # -> gap 16 -> dense12 -> Linear 12->3.
    net = create_model(
        "conv8-bn-pool-conv16k3p0-gap-dense12-drop.5", num_classes=3, input_size=(12, 12)
    )
    s = summarize(net, (1, 12, 12))
    params = {
        "conv8": 1 * 8 * 9,
        "bn": 2 * 8,
        "conv16": 8 * 16 * 9 + 16,
        "dense12": 16 * 12 + 12,
        "out": 12 * 3 + 3,
    }
    macs = {
        "conv8": 8 * 12 * 12 * (1 * 9),  # outputs x (C_in * kh * kw)
        "conv16": 16 * 4 * 4 * (8 * 9),
        "dense12": 16 * 12,
        "out": 12 * 3,
    }
    assert s.params == count_parameters(net) == sum(params.values()) == 1499
    assert s.macs == sum(macs.values()) == 29_028
    assert s.flops == 2 * 29_028
    rows = {r.name: r for r in s.rows}
    assert rows["body.0"].shape == (8, 12, 12) and rows["body.0"].macs == macs["conv8"]
    assert rows["body.3"].shape == (8, 6, 6) and rows["body.3"].params == 0
    assert rows["body.4"].shape == (16, 4, 4) and rows["body.4"].params == params["conv16"]
    assert rows["classifier.2"].shape == (12,) and rows["classifier.2"].macs == macs["dense12"]
    assert [r.part for r in s.rows] == ["features"] * 6 + ["head"] * 6
    assert s.features_shape == (16, 4, 4) and s.output_shape == (3,)
    text = str(s)
    assert "1,499 parameters" in text and "58.1 k FLOPs" in text


def test_count_macs_counts_groups_and_linear_on_every_position():
    assert count_macs(nn.Conv2d(4, 8, 3, groups=2), torch.zeros(1, 8, 5, 5)) == 8 * 25 * 2 * 9
    assert count_macs(nn.Linear(6, 5), torch.zeros(1, 7, 5)) == 7 * 5 * 6
    assert count_macs(nn.ReLU(), torch.zeros(1, 3)) == 0


def test_summary_of_a_block_model_keeps_blocks_as_rows():
    s = summarize(create_model("resnet20", in_channels=3, input_size=(32, 32)), (3, 32, 32))
    names = [r.name for r in s.rows]
    assert "layer1.0" in names and "layer1.0.conv1" not in names
    assert s.params == count_parameters(create_model("resnet20", in_channels=3))
    # CIFAR ResNet-20 is about 41 M multiply-adds at 32x32 (He et al.'s table: 41 M).
    assert 40e6 < s.macs < 42e6


# --- the contract every registry model keeps ------------------------------------------------

SPECS = [
    "conv32-conv32-pool-drop.25-conv64-conv64-pool-drop.25-flat-dense256-drop.5",
    "conv8k5s2p2-bn-silu-res16-res16s2-avgpool-gap-dense16-tanh",
    "conv8-bn-pool3s1-conv8-linear-bn-gelu-flat-dense8-bn",
    "flat-dense32-drop.1-dense16",
    "conv8-bn-relu-pool-gap-dense5",  # its dense5 is the output layer (5 classes below)
    "flat-dense32-dense5-softmax",
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("channels", [1, 3])
def test_spec_models_keep_the_model_contract(spec, channels, tmp_path):
    torch.manual_seed(0)
    size = (16, 12)
    model = create_model(spec, in_channels=channels, num_classes=5, input_size=size)
    x = torch.randn(4, channels, *size, generator=torch.Generator().manual_seed(1))
    # forward shape, and forward == head(features)
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (4, 5) and torch.isfinite(out).all()
        assert torch.equal(model.head(model.features(x)), out)
    # every parameter gets a gradient
    model.train()
    nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    # arch through JSON, and a bundle round trip (BN running stats moved by the step above)
    model.eval()
    arch = json.loads(json.dumps(model.arch))
    assert arch["name"] == "spec" and arch["kwargs"]["spec"] == spec
    prep = Preprocess(size=size, channels=channels, mean=[0.5] * channels, std=[0.25] * channels)
    save_model(model, tmp_path / "m", classes=list("abcde"), preprocess=prep)
    torch.manual_seed(123)  # a different init, so equal outputs come from the saved weights
    loaded = load_model(tmp_path / "m").model
    rebuilt = create_model_from_arch(arch).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(rebuilt(x), model(x))
    # reset_head changes the head only; layer groups hold every parameter once
    body = {k: v.clone() for k, v in model.body.state_dict().items()}
    model.reset_head(7)
    assert model(x).shape == (4, 7) and model.arch["num_classes"] == 7
    # ... and the arch still rebuilds this model (a last dense5 output became dense7)
    again = create_model_from_arch(model.arch)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes
    assert all(torch.equal(v, model.body.state_dict()[k]) for k, v in body.items())
    seen = [id(p) for g in model.layer_groups() for m in g for p in m.parameters()]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())


def test_grad_cam_works_on_a_spec_model():
    torch.manual_seed(0)
    model = create_model("conv8-pool-conv16-gap", num_classes=3, input_size=(16, 16)).eval()
    cam = grad_cam(model, torch.randn(2, 1, 16, 16))
    assert torch.as_tensor(cam).shape[0] == 2


def test_spec_is_a_registry_model():
    names = [m.name for m in list_models()]
    assert "spec" in names  # so the registry's contract tests cover the default spec too
    info = get_model_info("conv8-pool-flat")
    assert info.name == "spec" and info.defaults["spec"] == "conv8-pool-flat"
    model = create_model("spec", spec="conv8-gap", input_size=(8, 8))
    assert model.arch["kwargs"] == {"spec": "conv8-gap", "activation": "relu"}


# --- Sequential ------------------------------------------------------------------------------


def test_sequential_builds_the_same_model_as_the_spec():
    layers = [
        Conv(32),
        Conv(32, kernel=5, stride=2, padding=0),
        BatchNorm(),
        Activation("gelu"),
        Pool(),
        Dropout(0.25),
        Residual(32),
        Residual(64, stride=2),
        AvgPool(3, stride=1),
        GlobalAvgPool(),
        Dense(64),
        Dropout(0.5),
    ]
    spec = "conv32-conv32k5s2p0-bn-gelu-pool-drop0.25-res32-res64s2-avgpool3s1-gap-dense64-drop0.5"
    assert to_spec(layers) == spec
    torch.manual_seed(0)
    seq = Sequential(layers, input_shape=(3, 28, 28), num_classes=4)
    torch.manual_seed(0)
    ref = create_model(spec, in_channels=3, num_classes=4, input_size=(28, 28))
    assert seq.arch == ref.arch
    assert str(seq.body) == str(ref.body) and str(seq.classifier) == str(ref.classifier)
    a, b = seq.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 28, 28)
    seq.eval(), ref.eval()
    with torch.no_grad():
        assert torch.equal(seq(x), ref(x))


def test_sequential_keras_example_summary_and_errors():
    model = Sequential(
        [Conv(32), Conv(32), Pool(), Dropout(0.25), Flatten(), Dense(128), Dropout(0.5)],
        input_shape=(1, 28, 28),
        num_classes=10,
    )
    assert model.spec == "conv32-conv32-pool-drop0.25-flat-dense128-drop0.5"
    s = model.summary()
    assert s.output_shape == (10,) and s.params == count_parameters(model)
    # 28 -> 28 -> 28 ('same') -> pool 14: flat 32*14*14 = 6272 into dense 128
    assert any(r.layer == "Linear 6272->128" for r in s.rows)
    with pytest.raises(SpecError, match=r"layers\[1\] Dense\(4\) needs a vector") as e:
        Sequential([Conv(8), Dense(4)], input_shape=(1, 8, 8))
    assert e.value.index == 1 and "dense4" not in str(e.value)
    with pytest.raises(Exception, match="deepstart layers"):
        Sequential([nn.ReLU()])


# --- the command line ------------------------------------------------------------------------


def test_models_show_prints_the_layer_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table at 80 columns otherwise
    assert main(["models", "show", "conv8-bn-pool-conv16k3p0-gap-dense12-drop.5",
                 "--input-size", "12", "--classes", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Conv2d 1->8 3x3 s1 p1" in out and "16x4x4" in out
    assert "1,499 parameters" in out and "58.1 k FLOPs" in out
    assert main(["models", "show", "mnist_cnn"]) == 0
    out = capsys.readouterr().out
    assert "1,199,882 parameters" in out and "9216" in out
    assert main(["models", "show", "vgg_small", "--input-size", "16", "16",
                 "--channels", "3", "--model-opt", "width=8"]) == 0  # fmt: skip
    assert "3x16x16" in capsys.readouterr().out
    assert main(["models"]) == 0  # the list still works, and lists spec
    assert "spec" in capsys.readouterr().out


def test_models_show_bad_spec_shows_the_caret(capsys):
    assert main(["models", "show", "conv8-pool-dense4-flat"]) == 2
    err = capsys.readouterr().err
    assert "conv8-pool-dense4-flat\n" in err and "\n             ^^^^^^" in err


@pytest.mark.slow  # a training run and an ONNX export (torch.export): about 10 s
def test_train_with_a_spec_writes_an_ordinary_run(tmp_path, capsys):
    spec = "conv8-bn-pool-res16s2-flat-dense16-drop.25"
    args = ["train", "--data", "shapes", "--data-opt", "n_train=120", "--data-opt", "n_test=30",
            "--size", "16", "--model", spec, "--epochs", "1", "--batch-size", "32",
            "--out", str(tmp_path), "--progress", "none", "--no-report"]  # fmt: skip
    assert main(args) == 0
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-shapes-spec")
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"] == {
        "name": "spec",
        "options": {"spec": spec},
        "pretrained": None,
        "pretrained_sha256": None,
    }
    saved = load_model(run_dir)
    assert saved.model.arch["kwargs"]["spec"] == spec
    assert saved.model(torch.zeros(1, 1, 16, 16)).shape == (1, 3)
    # It ships like any model: predict through the bundle, export to ONNX with parity.
    bundle = load_bundle(run_dir)
    test = load_dataset("shapes", size=(16, 16), n_train=30, n_test=6).test
    preds = bundle.predict([img[0] for img in test.images[:2].numpy()])  # two (H, W) uint8
    assert len(preds) == 2 and preds[0].label in ("circle", "square", "triangle")
    pytest.importorskip("onnxscript", reason="needs deepstart[onnx]")
    pytest.importorskip("onnxruntime", reason="needs deepstart[onnx]")
    res = bundle.export_onnx(tmp_path / "spec.onnx")
    assert res.ok and res.max_abs_logit > 0


def test_build_spec_directly():
    net = build_spec("conv4-gap", in_channels=2, num_classes=3, input_size=(5, 5))
    assert net(torch.zeros(1, 2, 5, 5)).shape == (1, 3)


ISSUE_SPEC = "conv16-bn-relu-pool-conv32-bn-relu-pool-gap-dense3"


def test_models_show_without_data_says_the_outputs_come_from_the_data(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["models", "show", ISSUE_SPEC]) == 0
    out = capsys.readouterr().out
    # The spec's dense3 is its output layer: no ReLU, no second head, no made-up 10.
    assert "Linear 32->3 " in out and "3->10" not in out and "-> 3 outputs" in out
    assert "outputs: one per class of the data (here 3; --data NAME or --classes K)" in out
    assert main(["models", "show", "mnist_cnn"]) == 0
    assert "outputs: one per class of the data (here 10;" in capsys.readouterr().out


def test_models_show_with_data_builds_it_for_that_dataset(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["models", "show", "conv8-pool-gap-dense16", "--data", "shapes"]) == 0
    out = capsys.readouterr().out
    assert "1x32x32 -> 3 classes of shapes" in out and "Linear 16->3 " in out
    assert "output 3" in out and "one per class of the data" not in out
    # a dense with one unit per class of the data is the output layer
    assert main(["models", "show", "conv8-pool-gap-dense3", "--data", "shapes"]) == 0
    out = capsys.readouterr().out
    assert "Linear 8->3 " in out and "Linear 3->3" not in out


def test_models_table_reads_at_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    words = set(out.split())
    for info in list_models(task=None):
        assert info.name in words  # whole, never cut or wrapped
        # descriptions wrap between words, never inside one
        assert all(w in words for w in info.description.split()), info.name
