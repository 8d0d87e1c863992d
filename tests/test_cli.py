"""The real subcommands, run in-process and as a subprocess, on tiny data in tmp_path."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from deepstart.cli import main

TINY = ["--data-opt", "n_train=300", "--data-opt", "n_test=90", "--size", "16"]


def _train(tmp_path, *extra):
    args = [
        "train",
        "--data",
        "shapes",
        *TINY,
        "--model",
        "vgg_small",
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--batch-size",
        "32",
        "--out",
        str(tmp_path / "runs"),
        "--progress",
        "plain",
        *extra,
    ]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def test_train_writes_a_complete_run_dir(tmp_path, capsys):
    run_dir = _train(tmp_path)
    out = capsys.readouterr().out
    assert "chance level for 3 classes" in out
    assert "  1/2 " in out and "  2/2 " in out
    assert "test accuracy" in out
    assert run_dir.name.endswith("-shapes-vgg_small")
    for name in (
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "model.json",
        "results.json",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "train_loss", "valid_loss", "accuracy", "lr", "seconds"}
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["name"] == "vgg_small"
    assert cfg["resolved"]["dataset"]["splits"] == {"train": 270, "valid": 30, "test": 90}
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["classes"] == ["circle", "square", "triangle"]
    assert meta["preprocess"]["size"] == [16, 16]


def test_evaluate_reproduces_the_test_score(tmp_path, capsys):
    run_dir = _train(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert res["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)
    assert [p["class"] for p in res["per_class"]] == ["circle", "square", "triangle"]
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "circle" in out


def test_data_commands(tmp_path, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("shapes", "mnist", "fashion_mnist", "kmnist", "cifar10", "folder"):
        assert name in out
    png = tmp_path / "grid.png"
    assert main(["data", "show", "shapes", *TINY, "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "train 270" in out and "mean [" in out and "triangle" in out
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 100
    folder = tmp_path / "png"
    assert (
        main(
            [
                "data",
                "make",
                "shapes",
                "--out",
                str(folder),
                "--n-train",
                "30",
                "--n-test",
                "9",
                "--size",
                "16",
            ]
        )
        == 0
    )
    assert len(list((folder / "train" / "circle").glob("*.png"))) == 10
    assert len(list((folder / "test").rglob("*.png"))) == 9


def test_train_from_a_made_folder(tmp_path, capsys):
    folder = tmp_path / "png"
    main(
        [
            "data",
            "make",
            "shapes",
            "--out",
            str(folder),
            "--n-train",
            "150",
            "--n-test",
            "30",
            "--size",
            "16",
        ]
    )
    args = [
        "train",
        "--data",
        "folder",
        "--data-dir",
        str(folder),
        "--model",
        "logreg",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--progress",
        "plain",
    ]
    assert main(args) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_models_lists_registry_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "mnist_cnn" in out and "1,199,882" in out  # the Keras example's count
    assert "logreg" in out and "7,850" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "nosuch"], "unknown dataset 'nosuch'"),
        (["train", "--model", "nosuch", *TINY], "unknown model 'nosuch'"),
        (["train", "--epochs", "0"], "epochs must be at least 1"),
        (["evaluate", "/nonexistent/run"], "no model.json"),
        (["train", "--data", "mnist", "--data-dir", "/nonexistent"], "mnist"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message, capsys, monkeypatch):
    # No mirror is reachable in tests: a missing dataset must not try the network.
    monkeypatch.setattr("urllib.request.urlopen", _no_network)
    assert main(args) == 2
    # (stderr also says which downloads were tried: progress is not the error)
    err = [line for line in capsys.readouterr().err.splitlines() if "downloading" not in line]
    assert len(err) == 1 and err[0].startswith("deepstart: error:") and message in err[0]
    assert "Traceback" not in err[0]


def _no_network(*a, **k):
    raise OSError("network disabled in tests")


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["train"],
        ["data"],
        ["data", "show"],
        ["data", "make"],
        ["models"],
        ["evaluate"],
        ["data", "list"],
    ],
)
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: deepstart" in capsys.readouterr().out


def test_the_command_leaves_the_last_garbage_collection_out(monkeypatch, capsys):
    import gc

    from deepstart.cli import entry

    monkeypatch.setattr(sys, "argv", ["deepstart", "models"])
    assert gc.get_freeze_count() == 0
    try:
        assert entry() == 0  # the command's own work, as main() does it
        assert "vgg_small" in capsys.readouterr().out
        assert gc.get_freeze_count() > 0  # everything alive now is out of the final pass
    finally:
        gc.unfreeze()  # this process goes on: give the collector its objects back


def test_python_dash_m_and_entry_point(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "deepstart", "models"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "vgg_small" in r.stdout
    exe = Path(sys.executable).parent / "deepstart"  # the console script pip installed
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "train" in r.stdout
