"""`deepstart tune`: the space grammar, and real tiny studies on shapes at 16x16 in SQLite:
run, resume, reproduce the best, prune, crash, interrupt, time budget, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from deepstart.cli import main
from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.errors import ConfigError
from deepstart.run.runner import load_run_config, train_run
from deepstart.train.callbacks import Callback
from deepstart.tune import TuneConfig, load_space, parse_space, tune
from deepstart.tune.space import Param, SearchSpace, apply_values, fill_template

optuna = pytest.importorskip("optuna")

# --- the space ---------------------------------------------------------------------------


def test_space_entries_of_every_kind():
    space = parse_space(
        "lr=log(1e-4, 1e-1) wd=float(0,0.1) p=float(0,0.5,0.1) width=int(16,64) "
        "w=int(16,64,16) h=logint(32,512) bs=[64,128,256] opt=[adamw,sgd] flag=[true,false] "
        "epochs=3 schedule=constant"
    )
    p = {x.name: x for x in space.params}
    assert p["lr"] == Param("lr", "float", 1e-4, 1e-1, log=True)
    assert p["wd"] == Param("wd", "float", 0.0, 0.1)
    assert p["p"].step == 0.1 and p["w"] == Param("w", "int", 16, 64, step=16)
    assert p["h"] == Param("h", "int", 32, 512, log=True)
    assert p["bs"].choices == (64, 128, 256) and p["opt"].choices == ("adamw", "sgd")
    assert p["flag"].choices == (True, False)
    assert space.fixed == {"epochs": 3, "schedule": "constant"}
    assert [x.name for x in space.searched] == [
        "lr",
        "wd",
        "p",
        "width",
        "w",
        "h",
        "bs",
        "opt",
        "flag",
    ]
    # written back and read again, and through the JSON the study stores
    assert parse_space(space.describe()) == space
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr", "entries are NAME=VALUE"),
        ("lr=log(1e-4)", "takes two numbers"),
        ("lr=log(0,1)", "log range needs low > 0"),
        ("lr=float(1,0.5)", "needs low < high"),
        ("w=int(1.5,4)", "whole numbers"),
        ("lr=log(1e-4,1,0.1)", "has no step"),
        ("bs=[64,64]", "twice"),
        ("lr=1 lr=2", "given twice"),
        ("", "empty"),
    ],
)
def test_bad_spaces_say_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(text)


def test_space_file_yaml(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: log(1e-4, 1e-1)\nbatch_size: [64, 128]\nepochs: 3\nwd: 1e-3\n")
    space = load_space(path)
    assert space == parse_space("lr=log(1e-4,1e-1) batch_size=[64,128] epochs=3 wd=0.001")
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="maps names"):
        load_space(path)


def test_values_go_to_train_fields_templates_and_model_options():
    base = RunConfig(model=ModelConfig("conv{width}-pool-conv{width*2}-drop{p}-gap"))
    cfg = apply_values(base, {"width": 16, "p": 0.25, "lr": 0.01, "batch_size": 64})
    assert cfg.model.name == "spec"
    assert cfg.model.options["spec"] == "conv16-pool-conv32-drop0.25-gap"
    assert cfg.train.lr == 0.01 and cfg.train.batch_size == 64
    vgg = apply_values(
        RunConfig(model=ModelConfig("vgg_small")), {"width": 8, "data.valid_pct": 0.2}
    )
    assert vgg.model.options == {"width": 8} and vgg.data.valid_pct == 0.2
    picked = apply_values(RunConfig(), {"model": "mlp", "model.hidden": 32})
    assert picked.model.name == "mlp" and picked.model.options == {"hidden": 32}
    assert fill_template("conv{w}-drop{p}", {"w": 8, "p": 0.5}) == "conv8-drop0.5"
    with pytest.raises(ConfigError, match="no space entry"):
        fill_template("conv{w}-gap", {})
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        apply_values(RunConfig(), {"epochs": 0})
    with pytest.raises(ConfigError, match="not a training setting"):
        apply_values(RunConfig(), {"train.out": "x"})


# --- studies -----------------------------------------------------------------------------

MODEL = "conv{width}-pool-conv{width*2}-pool-flat-dense16"


def _base(**train) -> RunConfig:
    """Shapes at 16x16, a few hundred images: a trial trains in about a second."""
    return RunConfig(
        data=DataConfig("shapes", size=(16, 16), options={"n_train": 240, "n_test": 60}),
        model=ModelConfig(MODEL),
        train=TrainConfig(batch_size=32, checkpoint=False, device="cpu", **train),
    )


def _cfg(tmp_path, space: str, **kw) -> TuneConfig:
    kw.setdefault("best_report", False)
    return TuneConfig(_base(), parse_space(space), out=str(tmp_path / "studies"), **kw)


def _study(res):
    return optuna.load_study(study_name=res.name, storage=res.storage)


@pytest.mark.slow  # six short trainings and the plots: about 14 s on 2 quiet cores
def test_study_runs_resumes_and_its_best_config_reproduces_its_score(tmp_path):
    cfg = _cfg(tmp_path, "lr=log(1e-3,3e-2) width=int(4,12) epochs=1", trials=3)
    res = tune(cfg, log=lambda m: None)
    assert res.name == "shapes-spec" and res.storage.startswith("sqlite:///")
    assert (res.directory / "study.db").is_file()
    assert [r.state for r in res.rows] == ["COMPLETE"] * 3
    # Each trial is an ordinary run directory with its bundle and config.
    for r in res.rows:
        run_cfg = load_run_config(r.run_dir)
        w = r.params["width"]
        assert run_cfg.model.options["spec"] == f"conv{w}-pool-conv{2 * w}-pool-flat-dense16"
        assert run_cfg.train.lr == pytest.approx(r.params["lr"])
    best = min(res.rows, key=lambda r: r.value)
    assert res.best.number == best.number
    # The page and the plots: PNG data URIs, no script, no CDN.
    page = res.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(res.plots) >= 2
    assert "<script" not in page and "http" not in page.replace(res.storage, "")
    assert {"history", "slice"} <= set(res.plots)
    assert json.loads((res.directory / "study.json").read_text())["best"] == res.best.number

    # Resume: the same study in the same database gets more trials, sampled afresh.
    more = tune(dataclasses.replace(cfg, trials=2, resume=True, plots=False), log=lambda m: None)
    assert [r.number for r in more.rows] == [0, 1, 2, 3, 4]
    assert len(_study(more).trials) == 5
    assert all(r.state == "COMPLETE" for r in more.rows)
    seen = [tuple(sorted(r.params.items())) for r in more.rows]
    assert len(set(seen)) == 5

    # The best trial's config, trained again from its run directory, scores the same.
    best = more.best
    again = load_run_config(best.run_dir)
    again = dataclasses.replace(
        again, train=dataclasses.replace(again.train, out=str(tmp_path / "again"), report=False)
    )
    rerun = train_run(again, quiet=True)
    assert rerun.history[-1]["valid_loss"] == pytest.approx(best.value, abs=1e-6)


def test_a_bad_trial_is_pruned_by_the_median_pruner(tmp_path):
    # Trial 0 trains sensibly; trial 1's lr of 1.0 (guard off) blows the loss up in epoch 1:
    # about 12 nats against about 1.1, so the median pruner stops it there.
    cfg = _cfg(
        tmp_path,
        "lr=log(1e-3,1) width=8 epochs=3 schedule=constant guard=false",
        trials=2,
        prune_startup=1,
        prune_warmup=0,
        enqueue=({"lr": 3e-3}, {"lr": 1.0}),
    )
    res = tune(cfg, log=lambda m: None)
    good, bad = res.rows
    assert good.state == "COMPLETE" and good.epochs == 3
    assert bad.state == "PRUNED" and bad.note == "pruned after epoch 1"
    frozen = _study(res).trials[1]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert list(frozen.intermediate_values) == [1]
    assert frozen.intermediate_values[1] > 2 * _study(res).trials[0].intermediate_values[1]
    # It stopped training there: its run directory holds one epoch (and still a bundle).
    assert len(Path(bad.run_dir, "metrics.jsonl").read_text().splitlines()) == 1
    assert res.best.number == 0


def test_a_crashing_trial_is_fail_and_the_study_goes_on(tmp_path):
    # pool32 cannot pool a 16x16 image: building that trial's model raises.
    base = dataclasses.replace(_base(), model=ModelConfig("conv8-pool{k}-flat"))
    cfg = TuneConfig(
        base,
        parse_space("k=[32,2] epochs=1"),
        trials=2,
        out=str(tmp_path / "studies"),
        best_report=False,
        plots=False,
        enqueue=({"k": 32}, {"k": 2}),
    )
    lines = []
    res = tune(cfg, log=lines.append)
    crashed, fine = res.rows
    assert crashed.state == "FAIL" and "pool32" in crashed.note and "too small" in crashed.note
    assert fine.state == "COMPLETE" and res.best.number == 1
    assert any("FAIL" in line and "pool32" in line for line in lines)


class _Interrupt(Callback):
    def after_batch(self) -> None:
        raise KeyboardInterrupt


def test_interrupt_and_crash_leave_no_running_trial(tmp_path):
    cfg = _cfg(tmp_path, "lr=log(1e-3,1e-2) width=int(4,8) epochs=1", trials=3, plots=False)
    res = tune(cfg, callbacks=[_Interrupt()], log=lambda m: None)
    assert res.interrupted
    assert [r.state for r in res.rows] == ["FAIL"]
    assert res.rows[0].note == "interrupted"
    # A process killed mid-trial leaves it RUNNING in the database.
    study = _study(res)
    study.ask()
    assert study.trials[-1].state == optuna.trial.TrialState.RUNNING
    # Resuming marks it FAIL and goes on.
    more = tune(dataclasses.replace(cfg, trials=1, resume=True), log=lambda m: None)
    assert [r.state for r in more.rows] == ["FAIL", "FAIL", "COMPLETE"]
    assert "left RUNNING by a stopped process" in more.rows[1].note


def test_time_budget_stops_the_running_trial_at_an_epoch_end(tmp_path):
    cfg = _cfg(tmp_path, "lr=log(1e-3,1e-2) width=int(4,8) epochs=3", trials=5, max_time=0.01)
    res = tune(dataclasses.replace(cfg, plots=False), log=lambda m: None)
    assert len(res.rows) == 1  # no trial starts after the budget
    (row,) = res.rows
    assert row.state == "PRUNED" and row.note == "stopped: time budget after epoch 1"


def test_setup_errors_come_before_any_trial(tmp_path):
    cfg = _cfg(tmp_path, "lr=log(1e-3,1e-2) width=4 epochs=1", trials=1)
    with pytest.raises(ConfigError, match=r"no space entry for \{width\}"):
        tune(dataclasses.replace(cfg, space=parse_space("epochs=1")), log=lambda m: None)
    vgg = dataclasses.replace(cfg.base, model=ModelConfig("vgg_small"))
    bad = dataclasses.replace(cfg, base=vgg, space=parse_space("no_such_option=[1,2]"))
    with pytest.raises(Exception, match="no option 'no_such_option'"):
        tune(bad, log=lambda m: None)
    with pytest.raises(ConfigError, match="no study 'shapes-spec' to resume"):
        tune(dataclasses.replace(cfg, resume=True), log=lambda m: None)
    # The failed setup left no study behind, so a good one starts under the same name.
    tune(dataclasses.replace(cfg, plots=False), log=lambda m: None)
    with pytest.raises(ConfigError, match="already exists"):
        tune(cfg, log=lambda m: None)
    with pytest.raises(ConfigError, match="keeps its space"):
        tune(dataclasses.replace(cfg, resume=True, space=parse_space("lr=log(1e-4,1e-2)")))
    with pytest.raises(ConfigError, match="metric must be one of"):
        TuneConfig(cfg.base, cfg.space, metric="f1")


def test_cli_tune_with_a_space_file_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    space = tmp_path / "space.yaml"
    space.write_text("lr: log(1e-3, 1e-2)\nwidth: int(4, 8)\nepochs: 1\n")
    out = str(tmp_path / "studies")
    args = ["tune", "--data", "shapes", "--data-opt", "n_train=240", "--data-opt", "n_test=60",
            "--size", "16", "--model", MODEL, "--space-file", str(space), "--batch-size", "32",
            "--out", out, "--study-name", "cli", "--metric", "accuracy", "--device", "cpu",
            "--no-report"]  # fmt: skip
    assert main([*args, "--trials", "1"]) == 0
    text = capsys.readouterr().out
    assert "study cli: accuracy (maximize)" in text and "1 complete" in text
    assert "best run directory" in text and "study page:" in text
    # Resume by name only: the study keeps its setup.
    resume = ["tune", "--resume", "--study-name", "cli", "--out", out, "--trials", "1"]
    assert main([*resume, "--no-report"]) == 0
    assert "2 complete" in capsys.readouterr().out
    report = json.loads((tmp_path / "studies" / "cli" / "study.json").read_text())
    assert report["metric"] == "accuracy" and len(report["trials"]) == 2
    best = report["trials"][report["best"]]
    assert best["value"] == max(t["value"] for t in report["trials"])
    assert (tmp_path / "studies" / "cli" / "trials" / "0000").is_dir()
    assert main([*args, "--trials", "1"]) == 2  # exists: needs --resume
    assert "already exists" in capsys.readouterr().err
