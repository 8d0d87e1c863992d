"""The training options as a user reaches them: flags of `deepstart train` and `lr-find`."""

import json
import math
import re

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


def test_lr_auto_with_fine_tune_sweeps_the_head_alone(tmp_path, monkeypatch):
    """fine_tune's first phase trains the head on a frozen body: its LR is swept so."""
    from deepstart.run import resolve

    seen = []

    def spy(learn, **kwargs):
        seen.append([p.requires_grad for p in learn.model.parameters()])
        return real(learn, **kwargs)

    real = resolve.lr_find
    monkeypatch.setattr(resolve, "lr_find", spy)
    code, _ = _run(tmp_path, "--lr", "auto", "--fine-tune", "--freeze-epochs", "1", "--epochs", "1")
    assert code == 0 and len(seen) == 1
    assert any(seen[0]) and not all(seen[0])  # the head trains, the body does not


def test_lr_auto_runs_the_finder_and_records_it(tmp_path, capsys, monkeypatch):
    from deepstart.run import resolve

    monkeypatch.setattr(resolve, "choose", lambda *a: resolve.AutoLR(False, "is forced off"))
    code, (run_dir,) = _run(tmp_path, "--epochs", "2", "--lr", "auto")
    assert code == 0
    rec = json.loads((run_dir / "lr_find.json").read_text())
    assert rec["rule"] == "valley" and rec["chosen"] == rec["suggestions"]["valley"]
    assert rec["usual_lr"] == 2e-2 and rec["usual_lr_from"] == "vgg_small's own"
    with Image.open(run_dir / "lr_find.png") as im:
        assert im.size[0] > 300
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "event" not in r]  # guard events may sit between them
    assert [r["epoch"] for r in epochs] == [1, 2]  # the sweep adds no epoch rows
    assert rec["why"] == "is forced off" and math.isfinite(rec["chosen"])
    out = capsys.readouterr().out
    assert f"using valley {rec['chosen']:.2e}: vgg_small's own LR, 2.0e-02, is forced off" in out


def test_lr_auto_near_the_usual_lr_keeps_it_and_trains_exactly_as_without_auto(
    tmp_path, capsys, monkeypatch
):
    # The guarantee behind keeping it: the sweep leaves no trace (weights, optimizer, random
    # state), so the run is the very run `--lr <usual>` makes and cannot end below it.
    from deepstart.run import resolve

    monkeypatch.setattr(resolve, "KEEP_WITHIN", 1e9)  # every valley counts as near
    code, (auto_dir,) = _run(tmp_path / "auto", "--epochs", "2", "--lr", "auto")
    assert code == 0
    rec = json.loads((auto_dir / "lr_find.json").read_text())
    assert rec["rule"] == "usual" and rec["chosen"] == 2e-2 != rec["suggestions"]["valley"]
    assert "keeping 2.00e-02, vgg_small's own LR: the valley is within" in capsys.readouterr().out
    code, (plain_dir,) = _run(tmp_path / "plain", "--epochs", "2")
    assert code == 0

    def scores(run_dir):
        rows = (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines())
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if "event" not in r]

    assert scores(auto_dir) == scores(plain_dir)
    config = json.loads((auto_dir / "config.json").read_text())
    assert config["train"]["lr"] == 2e-2


@pytest.mark.parametrize(
    ("valley", "kept"),
    [(2e-3, True), (6e-3, True), (6.1e-3, False), (7e-4, True), (6.6e-4, False), (3e-2, False)],
)
def test_lr_auto_keeps_the_usual_lr_within_a_factor_of_three(valley, kept):
    from deepstart.run.resolve import choose, near

    assert near(valley, 2e-3) is kept
    # the lowest loss only matters below: a valley 3x above moves whatever it is
    assert choose(valley, 0.1, 2e-3).keep is (kept or valley < 2e-3)
    assert choose(valley, 1e-4, 2e-3).keep is kept


def test_lr_auto_keeps_the_usual_lr_when_the_sweep_suggests_none():
    from deepstart.run.resolve import choose

    pick = choose(math.nan, math.nan, 1e-2)  # too few points: every rule gives NaN
    assert pick.keep and "too short" in pick.why


@pytest.mark.parametrize(
    ("lowest", "kept"),
    [(6e-2, True), (1.01e-2, True), (1e-2, False), (6e-3, False), (math.nan, False)],
)
def test_lr_auto_goes_below_the_usual_lr_only_past_the_lowest_loss(lowest, kept):
    # logreg on Fashion-MNIST: valley 2.3e-3, its own 1e-2, the loss lowest at 5.5-9.5e-2
    from deepstart.run.resolve import choose

    pick = choose(2.3e-3, lowest, 1e-2)
    assert pick.keep is kept
    assert ("kept falling" in pick.why) is kept and ("too high" in pick.why) is not kept


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
    assert "<- read by --lr auto" in out and png.is_file()
    # no --model: the shapes recipe's model, so its LR (5e-3) is the one --lr auto may keep
    from deepstart.run.resolve import choose

    valley = float(re.search(r"valley +(\S+)  <- read by --lr auto", out).group(1))
    minimum = float(re.search(r"minimum +(\S+)", out).group(1))
    # the printed minimum is a tenth of the lowest loss's LR, rounded to 3 digits
    if choose(valley, 10 * minimum, 5e-3).keep:
        assert "--lr auto would keep 5.00e-03, recipe shapes-fast's LR: the valley is" in out
    else:
        assert "--lr auto would use the valley: recipe shapes-fast's LR, 5.0e-03, is more" in out


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
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "event" not in r]  # a guard event may sit between them
    assert len(epochs) < 200
    assert "max time: stopped after" in capsys.readouterr().out
    assert (run_dir / "model.safetensors").is_file()
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == len(epochs)


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


# --- the flags come from the config fields --------------------------------------------------


def _parse(*args):
    from deepstart.cli import build_parser

    return build_parser().parse_args(["train", *args])


def test_only_typed_flags_are_given():
    from deepstart.cli.options import given_options
    from deepstart.config import TrainConfig

    assert given_options(_parse(), TrainConfig) == {}
    given = given_options(_parse("--epochs", "2", "--lr", "auto", "--augment", "none"), TrainConfig)
    assert given == {"epochs": 2, "lr": "auto", "augment": None}  # none typed: no augmentation


def test_the_old_switch_spellings_still_work():
    from deepstart.cli.options import given_options
    from deepstart.config import TrainConfig

    switches = {
        "--no-report": ("report", False),
        "--no-checkpoint": ("checkpoint", False),
        "--no-guard": ("guard", False),
        "--fine-tune": ("fine_tune", True),
        "--freeze": ("freeze", True),
        "--precompute": ("precompute", True),
        "--sync-bn": ("sync_bn", True),
        "--fast-dev-run": ("fast_dev_run", True),
        "--tensorboard": ("tensorboard", True),
        "--tta": ("tta", True),
        "--lookahead": ("lookahead", True),
        "--nesterov": ("nesterov", True),
        "--keep-better": ("keep_better", True),
        "--no-tta": ("tta", False),
        "--report": ("report", True),
    }
    for flag, (name, value) in switches.items():
        assert given_options(_parse(flag), TrainConfig) == {name: value}, flag
    given = given_options(_parse("--checkpoint-every", "2.5", "--dist-timeout", "5m"), TrainConfig)
    assert given == {"checkpoint_minutes": 2.5, "dist_timeout": 300.0}


def test_choices_come_from_the_library(capsys):
    from deepstart.augment import PRESETS

    for name in PRESETS:
        _parse("--augment", name)
    with pytest.raises(SystemExit):
        _parse("--augment", "sideways")
    assert "invalid choice: 'sideways'" in capsys.readouterr().err
    _parse("--opt", "rmsprop")
    with pytest.raises(SystemExit):
        _parse("--opt", "adagrad")
    assert "invalid choice: 'adagrad'" in capsys.readouterr().err


def test_a_new_option_is_one_field(capsys):
    # A field added to (a subclass of) TrainConfig is a working flag with nothing else written.
    import argparse
    import dataclasses

    from deepstart.cli.options import add_option_groups, given_options
    from deepstart.config import TrainConfig, option

    @dataclasses.dataclass(frozen=True)
    class Warmed(TrainConfig):
        """Warm-up."""

        warmup_steps: int = option(40, help="steps of linear LR warm-up", metavar="N")

    parser = argparse.ArgumentParser(prog="x")
    add_option_groups(parser, Warmed)
    a = parser.parse_args(["--warmup-steps", "7", "--epochs", "2"])
    assert given_options(a, Warmed) == {"warmup_steps": 7, "epochs": 2}  # typed: an int
    assert Warmed(**given_options(a, Warmed)).warmup_steps == 7
    assert Warmed().warmup_steps == 40  # untyped: the field's default
    parser.print_help()
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Warm-up:" in help_text  # its group, from the class
    assert "--warmup-steps N steps of linear LR warm-up (default: 40)" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--warmup-steps", "soon"])
    assert "invalid int value: 'soon'" in capsys.readouterr().err


def test_lr_find_and_tune_take_defaults_from_the_fields(capsys):
    from deepstart.cli import build_parser, main

    for cmd in (["lr-find"], ["tune"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert (
            "(default: 128)" in out
            and "(default: adamw)" in out
            and "{sgd,adam,adamw,rmsprop}" in out
        )
    a = build_parser().parse_args(["lr-find", "--batch-size", "64"])
    assert a.batch_size == 64 and not hasattr(a, "opt")  # untyped: TrainConfig's default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lr-find", "--batch-size", "auto"])  # one batch size
    capsys.readouterr()
