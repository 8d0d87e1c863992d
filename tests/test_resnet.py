"""ResNets against a torchvision-shaped reference, and loading pretrained weights.

torchvision cannot be installed here, so the reference below re-implements its ResNet the way
torchvision's ``models/resnet.py`` does (``_make_layer``, ``inplanes``, ``+=`` shortcuts) with
the same module names; it is written separately from ``deepstart.models.resnet`` so that a
mistake in one is not copied into the other. The reference's state dict stands in for a
torchvision ImageNet checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from deepstart.cache import cache_root
from deepstart.interpret.vision import grad_cam
from deepstart.models.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedError,
    load_pretrained,
    pretrained_stats,
)
from deepstart.models.registry import count_parameters, create_model

# --- the reference: torchvision's ResNet, key for key -------------------------------------


class RefBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class RefResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


REF = {
    "resnet18": (RefBasicBlock, [2, 2, 2, 2]),
    "resnet34": (RefBasicBlock, [3, 4, 6, 3]),
    "resnet50": (RefBottleneck, [3, 4, 6, 3]),
}
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}


def reference(name: str, seed: int = 7) -> RefResNet:
    """A reference ResNet whose every weight and BatchNorm buffer is random (not the init
    values both implementations share), so equal outputs prove that everything was loaded."""
    torch.manual_seed(seed)
    block, layers = REF[name]
    ref = RefResNet(block, layers)
    with torch.no_grad():
        for key, t in ref.state_dict().items():
            if key.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                t.uniform_(0.2, 0.5)  # damped, so 16 blocks of random stats stay finite
            elif key.endswith(("running_var",)):
                t.uniform_(0.5, 2.0)
            elif key.endswith(("bias", "running_mean")):
                t.normal_(0.0, 0.1)
            elif key.endswith("num_batches_tracked"):
                t.fill_(1234)
    return ref.eval()


def images(n: int = 2, c: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def ref18():
    return reference("resnet18")


@pytest.fixture(scope="module")
def ref18_file(ref18, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(ref18.state_dict(), str(path))
    return path


def ours(name: str = "resnet18", **kwargs) -> nn.Module:
    torch.manual_seed(0)  # a different init from the reference's
    return create_model(name, **kwargs).eval()


# --- architecture -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_names_shapes_and_parameter_counts_are_torchvisions(name):
    model = create_model(name)
    assert count_parameters(model) == TORCHVISION_PARAMS[name]
    block, layers = REF[name]
    ref = {k: tuple(v.shape) for k, v in RefResNet(block, layers).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ref
    assert model.arch["input_size"] == [224, 224] and model.arch["num_classes"] == 1000


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_a_torchvision_state_dict_loads_exactly(name, tmp_path):
    ref = reference(name)
    x = images()
    with torch.no_grad():
        expected, expected_f = ref(x), ref.features(x)
    assert torch.isfinite(expected).all() and expected.std() > 0
    torch.save(ref.state_dict(), tmp_path / f"{name}.pth")
    save_file(ref.state_dict(), str(tmp_path / f"{name}.safetensors"))
    for file in (f"{name}.pth", f"{name}.safetensors"):
        model = ours(name)
        report = load_pretrained(model, tmp_path / file)
        assert report.complete and not report.head_skipped and not report.notes, str(report)
        assert len(report.loaded) == len(model.state_dict())
        with torch.no_grad():
            assert torch.equal(model(x), expected), file
            assert torch.equal(model.features(x), expected_f), file
        assert int(model.bn1.num_batches_tracked) == 1234


def test_cifar_resnets_forward_at_32x32_with_he_et_al_parameter_counts():
    def count(n: int, classes: int = 10) -> int:
        # He et al. 2015, CIFAR: conv3x3(3->16), 3 stages of n BasicBlocks (16, 32, 64), fc;
        # stages 2 and 3 open with a 1x1 conv + BN projection. BN: 2 parameters per channel.
        conv, bn = (lambda a, b, k=3: a * b * k * k), (lambda c: 2 * c)
        total = conv(3, 16) + bn(16)
        for c_in, c in ((16, 16), (16, 32), (32, 64)):
            total += conv(c_in, c) + conv(c, c) + 2 * bn(c)
            total += (conv(c_in, c, 1) + bn(c)) if c_in != c else 0
            total += (n - 1) * (2 * conv(c, c) + 2 * bn(c))
        return total + 64 * classes + classes

    for name, n in (("resnet20", 3), ("resnet56", 9)):
        model = ours(name)
        assert count_parameters(model) == count(n), name
        with torch.no_grad():
            assert model.features(images(2, 3, 32)).shape == (2, 64, 8, 8)
            assert model(images(2, 3, 32)).shape == (2, 10)
    assert count(3) == 272_474  # ~0.27M as in the paper (+1% for the projections)


def test_features_are_the_last_map_and_grad_cam_runs():
    model = ours("resnet18", num_classes=4)
    x = images(2, 3, 64)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (2, 512, 2, 2)  # 64 / 32
        assert torch.equal(model.head(f), model(x))
    cam = grad_cam(model, x)
    assert cam.shape == (2, 64, 64) and 0 <= float(cam.min()) <= float(cam.max()) <= 1


def test_any_channel_count_builds_its_own_conv1():
    for c in (1, 4):
        model = ours("resnet18", in_channels=c, num_classes=3)
        assert model.conv1.weight.shape == (64, c, 7, 7)
        with torch.no_grad():
            assert model(images(2, c, 32)).shape == (2, 3)
    assert ours("resnet20", in_channels=1).conv1.weight.shape == (16, 1, 3, 3)


def test_layer_groups_go_from_stem_to_head():
    model = ours("resnet18")
    stem_and_low, high, head = model.layer_groups()
    assert stem_and_low == [model.conv1, model.bn1, model.layer1, model.layer2]
    assert high == [model.layer3, model.layer4] and head == [model.fc]
    stem, rest, head = ours("resnet20").layer_groups()
    assert len(stem) == 3 and len(rest) == 2 and len(head) == 1


def test_reset_head_keeps_device_dtype_and_records_classes():
    model = ours("resnet18").double()
    model.reset_head(7)
    assert model.fc.out_features == 7 and model.fc.weight.dtype == torch.float64
    assert model.arch["num_classes"] == 7


# --- loading pretrained weights -----------------------------------------------------------


def test_the_head_is_kept_new_for_other_classes_and_strict_head_refuses(ref18, ref18_file):
    model = ours("resnet18", num_classes=5)
    fresh_fc = model.fc.weight.detach().clone()
    assert model.pretrained_from is None
    report = load_pretrained(model, ref18_file)
    assert model.pretrained_from == str(ref18_file)
    assert report.head_skipped == ["fc.weight", "fc.bias"]
    assert not report.missing and not report.unexpected and not report.mismatched
    assert "head fc" in str(report) and "1000 classes" in str(report)
    assert torch.equal(model.fc.weight, fresh_fc)
    x = images()
    with torch.no_grad():
        assert torch.equal(model.features(x), ref18.features(x))
    with pytest.raises(PretrainedError, match="for 1000 classes, the model's for 5"):
        load_pretrained(ours("resnet18", num_classes=5), ref18_file, strict_head=True)


def test_a_grey_model_gets_the_rgb_kernels_summed(ref18, ref18_file):
    model = ours("resnet18", in_channels=1)
    report = load_pretrained(model, ref18_file)
    assert "conv1.weight" in report.loaded and "summed its RGB kernels" in str(report)
    assert torch.equal(model.conv1.weight, ref18.conv1.weight.sum(1, keepdim=True))
    # A grey image is R = G = B, so the summed kernel sees what the RGB one saw.
    grey = images(2, 1, 64)
    with torch.no_grad():
        out, expected = model(grey), ref18(grey.expand(-1, 3, -1, -1))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert (report.mean, report.std) == ((0.449,), (0.226,))


def test_ddp_prefixes_and_checkpoint_wrappers_are_unwrapped(ref18, tmp_path):
    sd = ref18.state_dict()
    ddp = {f"module.{k}": v for k, v in sd.items()}
    torch.save(ddp, tmp_path / "ddp.pth")
    torch.save({"epoch": 3, "state_dict": sd, "best_acc": 0.9}, tmp_path / "ckpt.pt")
    compiled = {f"module._orig_mod.{k}": v for k, v in sd.items()}  # DDP(torch.compile(m))
    torch.save({"model": compiled}, tmp_path / "m.bin")
    lightning = {**{f"model.{k}": v for k, v in sd.items()}, "loss_fn.weight": torch.ones(3)}
    save_file(lightning, str(tmp_path / "lit.safetensors"))
    # torchvision's ImageNet files predate BatchNorm's step counter.
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    x = images()
    with torch.no_grad():
        expected = ref18(x)
    for file, notes in (
        ("ddp.pth", ["'module.'"]),
        ("ckpt.pt", []),
        ("m.bin", ["'module.'", "'_orig_mod.'"]),
        ("lit.safetensors", ["'model.' from 122 keys"]),
        ("old.pth", []),
    ):
        model = ours("resnet18")
        report = load_pretrained(model, tmp_path / file)
        assert not report.missing and not report.mismatched, str(report)
        assert report.unexpected == (["loss_fn.weight"] if file == "lit.safetensors" else [])
        assert all(note in str(report) for note in notes), str(report)
        with torch.no_grad():
            assert torch.equal(model(x), expected), file


def test_missing_and_unexpected_keys_are_reported_and_strict_refuses_them(ref18, tmp_path):
    sd = dict(ref18.state_dict())
    del sd["layer4.1.bn2.running_var"]
    sd["aux_head.weight"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    model = ours("resnet18")
    before = model.layer4[1].bn2.running_var.clone()
    report = load_pretrained(model, path)
    assert report.missing == ["layer4.1.bn2.running_var"]
    assert report.unexpected == ["aux_head.weight"] and not report.complete
    text = str(report)
    assert "1 missing from the file" in text and "aux_head.weight" in text
    assert torch.equal(model.layer4[1].bn2.running_var, before)
    with pytest.raises(PretrainedError, match="strict"):
        load_pretrained(ours("resnet18"), path, strict=True)


def test_weights_for_another_architecture_are_refused(ref18_file, tmp_path):
    save_file(reference("resnet50").state_dict(), str(tmp_path / "r50.safetensors"))
    save_file(reference("resnet34").state_dict(), str(tmp_path / "r34.safetensors"))
    model = ours("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PretrainedError, match="for a resnet18") as e:
        load_pretrained(model, tmp_path / "r50.safetensors")
    assert "another shape" in str(e.value)
    # resnet34's keys include all of resnet18's, same shapes, but half its blocks would be lost.
    with pytest.raises(PretrainedError, match=r"uses only 53% of the file's body weights"):
        load_pretrained(model, tmp_path / "r34.safetensors")
    with pytest.raises(PretrainedError, match=r"fills only 5\d% of the model's body"):
        load_pretrained(ours("resnet34"), ref18_file)
    # Refused before anything was copied in.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Asked for, a partial load goes ahead and says what it left out.
    report = load_pretrained(model, tmp_path / "r34.safetensors", min_match=0.5)
    assert not report.missing and "layer1.2.conv1.weight" in report.unexpected
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PretrainedError, match="no tensor in the file fits"):
        load_pretrained(ours("resnet20"), tmp_path / "other.safetensors")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(PretrainedError, match="not a state dict"):
        load_pretrained(model, tmp_path / "tensor.pth")
    with pytest.raises(PretrainedError, match="no pretrained weights file"):
        load_pretrained(model, tmp_path / "nope.pth")


def _side_effect(path: str) -> None:
    Path(path).write_text("code ran while loading")


class _Payload:
    """Pickles as "call _side_effect(path)": what a malicious checkpoint does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (_side_effect, (str(self.path),))


def test_a_pickle_that_runs_code_is_refused_unrun(ref18, tmp_path):
    # The payload is live: plain unpickling runs it.
    pickle.loads(pickle.dumps(_Payload(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "pwned"
    torch.save({"state_dict": ref18.state_dict(), "extra": _Payload(marker)}, tmp_path / "bad.pth")
    with pytest.raises(PretrainedError, match="refused to read"):
        load_pretrained(ours("resnet18"), tmp_path / "bad.pth")
    assert not marker.exists()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over ``tmp_path / "www"``; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _cached_files() -> list[Path]:
    return [p for p in cache_root().rglob("*") if p.is_file()]


def test_a_url_is_downloaded_into_the_cache_once_with_its_hash_checked(ref18_file, server):
    root, base = server
    data = ref18_file.read_bytes()
    (root / "r18.safetensors").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(PretrainedError, match="sha256"):
        load_pretrained(ours("resnet18"), f"{base}/r18.safetensors", sha256="0" * 64, quiet=True)
    assert _cached_files() == []  # nothing half-checked left behind

    report = load_pretrained(ours("resnet18"), f"{base}/r18.safetensors", sha256=digest, quiet=True)
    assert report.complete and report.path.parent.parent == cache_root() / "weights"
    assert _cached_files() == [report.path] and report.path.read_bytes() == data
    (root / "r18.safetensors").unlink()  # the second time comes from the cache
    again = load_pretrained(ours("resnet18"), f"{base}/r18.safetensors", sha256=digest)
    assert again.path == report.path and again.complete

    # torch.hub's convention: a hash prefix in the file name is checked when no sha256 is given.
    (root / "r18-deadbeef.safetensors").write_bytes(data)
    with pytest.raises(PretrainedError, match="deadbeef"):
        load_pretrained(ours("resnet18"), f"{base}/r18-deadbeef.safetensors", quiet=True)
    (root / f"r18-{digest[:8]}.safetensors").write_bytes(data)
    assert load_pretrained(ours("resnet18"), f"{base}/r18-{digest[:8]}.safetensors", quiet=True)
    with pytest.raises(PretrainedError, match="could not fetch"):
        load_pretrained(ours("resnet18"), f"{base}/absent.pth", quiet=True)


def test_a_file_url_and_a_local_hash_are_checked(ref18_file):
    digest = hashlib.sha256(ref18_file.read_bytes()).hexdigest()
    report = load_pretrained(ours("resnet18"), ref18_file.as_uri(), sha256=digest, quiet=True)
    assert report.complete and report.path.is_relative_to(cache_root())
    with pytest.raises(PretrainedError, match="expected"):
        load_pretrained(ours("resnet18"), ref18_file, sha256="1" * 64)


def test_the_normalisation_the_weights_expect():
    assert pretrained_stats(create_model("resnet50")) == (IMAGENET_MEAN, IMAGENET_STD)
    assert pretrained_stats(create_model("resnet20", in_channels=1)) == ((0.449,), (0.226,))
    mean, std = pretrained_stats(create_model("resnet18", in_channels=4))
    assert mean == (*IMAGENET_MEAN, IMAGENET_MEAN[0]) and std == (*IMAGENET_STD, IMAGENET_STD[0])
    assert pretrained_stats(create_model("vgg_small")) is None  # unknown: keep the data's stats
