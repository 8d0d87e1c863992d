"""The training options as a user reaches them: flags of `deepstart train` and `lr-find`."""

import json

import pytest
from PIL import Image

from deepstart.cli import main

TINY = [
    "--data",
    "shapes",
    "--data-opt",
    "n_train=300",
    "--data-opt",
    "n_test=90",
    "--size",
    "16",
    "--model",
    "vgg_small",
    "--batch-size",
    "32",
    "--progress",
    "plain",
    "--no-report",  # these tests are about the training options; test_report covers reports
]


def _run(tmp_path, *extra):
    out = tmp_path / "runs"
    code = main(["train", *TINY, "--out", str(out), *extra])
    dirs = list(out.iterdir()) if out.exists() else []
    return code, dirs


def test_fast_dev_run_runs_one_batch_each_and_saves_nothing(tmp_path, capsys):
    code, dirs = _run(tmp_path, "--epochs", "5", "--fast-dev-run")
    assert code == 0 and dirs == []
    out = capsys.readouterr().out
    assert "fast-dev-run passed" in out and "  1/1 " in out and "2/" not in out


def test_overfit_batches_memorises_a_fixed_set(tmp_path, capsys):
    # an MLP: no BatchNorm whose running statistics would lag on two batches
    code, (run_dir,) = _run(
        tmp_path, "--overfit-batches", "2", "--epochs", "15", "--lr", "3e-3", "--model", "mlp"
    )
    assert code == 0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["overfit_batches"] == 2
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["accuracy"] == 1.0  # validated on the same 64 images it trained on
    assert "overfit-batches: training and validating on the same 64 images" in (
        capsys.readouterr().out
    )


def test_lr_auto_runs_the_finder_and_records_it(tmp_path, capsys):
    code, (run_dir,) = _run(tmp_path, "--epochs", "2", "--lr", "auto")
    assert code == 0
    rec = json.loads((run_dir / "lr_find.json").read_text())
    assert rec["rule"] == "valley" and rec["chosen"] == rec["suggestions"]["valley"]
    with Image.open(run_dir / "lr_find.png") as im:
        assert im.size[0] > 300
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "event" not in r]  # guard events may sit between them
    assert [r["epoch"] for r in epochs] == [1, 2]  # the sweep adds no epoch rows
    assert f"using valley {rec['chosen']:.2e}" in capsys.readouterr().out


def test_lr_find_command(tmp_path, capsys):
    png = tmp_path / "lr.png"
    assert (
        main(
            [
                "lr-find",
                "--data",
                "shapes",
                "--data-opt",
                "n_train=300",
                "--size",
                "16",
                "--batch-size",
                "32",
                "--num-it",
                "40",
                "--out",
                str(png),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for rule in ("valley", "steep", "minimum", "slide"):
        assert rule in out
    assert "<- used by --lr auto" in out and png.is_file()


def test_options_reach_the_run(tmp_path, capsys):
    code, (run_dir,) = _run(
        tmp_path,
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--grad-clip",
        "1",
        "--ema",
        "0.9",
        "--label-smoothing",
        "0.1",
        "--class-weights",
        "balanced",
        "--early-stop",
        "3",
        "--max-time",
        "10m",
        "--precision",
        "fp32",
    )
    assert code == 0
    tc = json.loads((run_dir / "config.json").read_text())["train"]
    assert (tc["grad_clip"], tc["ema"], tc["label_smoothing"]) == (1.0, 0.9, 0.1)
    assert (tc["class_weights"], tc["early_stop"], tc["max_time"]) == ("balanced", 3, 600.0)
    assert (run_dir / "model.safetensors").is_file()


def test_max_time_stops_cleanly_and_saves_the_model(tmp_path, capsys):
    code, (run_dir,) = _run(tmp_path, "--epochs", "200", "--max-time", "3s")
    assert code == 0
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) < 200
    assert "max time: stopped after" in capsys.readouterr().out
    assert (run_dir / "model.safetensors").is_file()
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == len(rows)


def test_early_stopping_from_the_cli(tmp_path, capsys):
    # an LR so small nothing improves by min_delta: stops after patience epochs
    code, (run_dir,) = _run(
        tmp_path,
        "--epochs",
        "20",
        "--lr",
        "1e-9",
        "--early-stop",
        "2",
        "--min-delta",
        "0.5",
        "--no-guard",
    )
    assert code == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert "early stopping" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "fast"], "lr must be a number or 'auto'"),
        (["--batch-size", "big"], "batch size must be N or 'auto'"),
        (["--max-time", "soon"], "time must be like 90, 90s, 5m or 1.5h"),
        (["--class-weights", "x,y"], "class weights must be 'balanced'"),
    ],
)
def test_bad_option_values(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
