"""Hostile command lines (issue 22 item 9): each bad value ends in one line on stderr, exit 2
for a usage error or 1 for a deepstart error, never a traceback, and nothing half-made stays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from deepstart.cli import main
from deepstart.device import resolve_device
from deepstart.errors import ConfigError

TINY = ["--data", "shapes", "--data-opt", "n_train=60", "--data-opt", "n_test=30", "--size", "16"]
TINY += ["--epochs", "1", "--no-report", "--progress", "none", "--model", "logreg"]


def _fails_in_one_line(capsys, argv, *expected):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    ("device", "says"),
    [
        ("tpu9", "unknown device 'tpu9'"),
        ("cuda", "CUDA is not available"),
        ("cuda:1", "CUDA is not available"),
        ("mps", "MPS is not available"),
        ("meta", "deepstart runs on"),
    ],
)
def test_a_device_this_machine_lacks(tmp_path, capsys, device, says):
    if device.startswith("cuda") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "runs"
    _fails_in_one_line(capsys, ["train", *TINY, "--device", device, "--out", str(out)], says)
    assert not out.exists()  # refused before a run directory was made


def test_resolve_device_refuses_before_any_tensor_moves():
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    assert resolve_device("cpu").type == "cpu"


def test_out_pointing_at_a_file(tmp_path, capsys):
    afile = tmp_path / "runs"
    afile.write_text("not a folder")
    _fails_in_one_line(capsys, ["train", *TINY, "--out", str(afile)], "is a file")
    _fails_in_one_line(capsys, ["train", *TINY, "--out", str(afile / "sub")], "cannot create")
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("data", "opt", "says"),
    [
        ("shapes", "foo=bar", "shapes has no option foo; its options: "),
        ("mnist", "n_train=3", "mnist has no option n_train"),
    ],
)
def test_an_unknown_data_option(tmp_path, capsys, data, opt, says):
    argv = ["train", "--data", data, "--data-opt", opt, "--epochs", "1", "--out", str(tmp_path)]
    _fails_in_one_line(capsys, argv, says)


def test_resume_with_a_broken_config(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"data": {"name": "shap')
    _fails_in_one_line(capsys, ["train", "--resume", str(run)], "not valid JSON")
    (run / "config.json").write_text("[1, 2]")
    _fails_in_one_line(capsys, ["train", "--resume", str(run)], "config")


def test_a_negative_weight_decay(tmp_path, capsys):
    out = tmp_path / "runs"
    _fails_in_one_line(capsys, ["train", *TINY, "--wd", "-5", "--out", str(out)], "wd must be")
    assert not out.exists()


def test_a_split_that_leaves_no_validation_images(tmp_path, capsys):
    # One training image per class: before, every epoch scored valid_loss 0.0 (the "best").
    out = tmp_path / "runs"
    argv = ["train", *TINY, "--data-opt", "train_per_class=1", "--out", str(out)]
    _fails_in_one_line(capsys, argv, "no validation images")
    assert not out.exists() or not list(out.iterdir())


# -- a finished tiny run, shared by the resume and bundle tests -------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--out", str(out)]) == 0
    (run,) = out.iterdir()
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


class _Smuggled:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: torch.save({"model": _Smuggled()}, p),
    ],
    ids=["empty", "truncated", "pickle"],
)
def test_resume_from_a_broken_checkpoint(tmp_path, capsys, tiny_run, damage):
    run = _copy(tiny_run, tmp_path / "run")
    damage(run / "checkpoints" / "last.pt")
    err = _fails_in_one_line(capsys, ["train", "--resume", str(run)], "last.pt")
    assert "checkpoint" in err and "this must never run" not in capsys.readouterr().out


def test_typed_output_flags_override_a_resumed_runs_config(tmp_path, capsys, tiny_run):
    run = _copy(tiny_run, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["report"] = True  # as if started without --no-report
    (run / "config.json").write_text(json.dumps(cfg))
    for name in ("model.safetensors", "results.json"):
        (run / name).unlink()
    assert main(["train", "--resume", str(run), "--no-report", "--progress", "none"]) == 0
    assert (run / "model.safetensors").is_file()
    assert not (run / "report.html").exists()  # before: --no-report was ignored


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys, tiny_run):
    run = _copy(tiny_run, tmp_path / "run")
    _fails_in_one_line(capsys, ["train", "--resume", str(run), "--epochs", "9"], "--epochs")


def _meta(run: Path, change) -> Path:
    meta = json.loads((run / "model.json").read_text())
    change(meta)
    (run / "model.json").write_text(json.dumps(meta))
    return run


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: m["arch"].update(num_classes=10**12), "outputs"),
        (lambda m: m["arch"].update(num_classes="3"), "not a whole number"),
        (lambda m: m["arch"].update(input_size=[100000, 100000]), "input size"),
        (lambda m: m["arch"].update(in_channels=10**9), "channels"),
        (
            lambda m: m["arch"].update(name="mlp", kwargs={"hidden": [10**9], "dropout": 0.0}),
            "parameters",
        ),
        (lambda m: m["preprocess"].update(size=[100000, 100000]), "preprocess size"),
        (lambda m: m["preprocess"].update(size=[0, 16]), "preprocess size"),
        (
            lambda m: m["preprocess"].update(channels=1000, mean=[0.5] * 1000, std=[0.2] * 1000),
            "channels",
        ),
        (lambda m: m["preprocess"].update(resize="zoom"), "resize"),
    ],
    ids=[
        "classes",
        "classes-text",
        "input-size",
        "in-channels",
        "params",
        "size",
        "size0",
        "channels",
        "resize",
    ],
)
def test_a_bundle_with_absurd_sizes_is_refused_at_load(tmp_path, capsys, tiny_run, change, says):
    # Before: a raw allocation error, an OOM kill in predict ("broken image file:
    # MemoryError"), or a resize mode silently read as "squish". Export loads the bundle
    # first, and never allocates what a prediction would.
    run = _meta(_copy(tiny_run, tmp_path / "run"), change)
    _fails_in_one_line(capsys, ["export", str(run), "--out", str(tmp_path / "b.zip")], says)
    assert not (tmp_path / "b.zip").exists()


@pytest.mark.parametrize("command", ["serve", "predict"])
def test_a_device_that_does_not_exist_for_a_bundle(tmp_path, capsys, tiny_run, command):
    argv = [command, str(tiny_run), "--device", "tpu"]
    if command == "predict":
        argv.insert(2, str(tmp_path / "none.png"))
    _fails_in_one_line(capsys, argv, "unknown device 'tpu'")


def test_a_folder_takes_its_own_options(tmp_path):
    # The option check must not refuse what load_folder takes (it once refused --size).
    from PIL import Image

    from deepstart.data.catalog import load_dataset

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.new("RGB", (20, 24), (40 * i, 100 if c == "a" else 0, 0)).save(
                tmp_path / c / f"{i}.png"
            )
    data = load_dataset(str(tmp_path), size=16, channels=1, resize="crop", valid_pct=0.34)
    assert data.size == (16, 16) and data.channels == 1
    with pytest.raises(Exception, match="folder has no option colour"):
        load_dataset(str(tmp_path), colour="red")
