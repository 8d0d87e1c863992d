"""A whole run from a config: data, model, training, test score and the run directory.

This is what ``deepstart train`` and ``deepstart evaluate`` call; the same steps are open
to Python users who want to change one of them.

Run directory ``runs/<time>-<data>-<model>/``:
    config.json     the resolved RunConfig, dataset summary, model arch, versions
    metrics.jsonl   one line per epoch (epoch, train_loss, valid_loss, accuracy, lr, seconds)
    checkpoints/    last.pt and best.pt (tensors only: torch.load(weights_only=True))
    model.safetensors + model.json   the final model, its classes and preprocessing
    results.json    final test metrics
"""

from __future__ import annotations

import dataclasses
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from deepstart.cache import atomic_write
from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.data.catalog import load_dataset
from deepstart.data.dataset import DataError, Dataset
from deepstart.device import busy_cpu_note, resolve_device
from deepstart.errors import ConfigError, DeepstartError
from deepstart.models.pretrained import load_pretrained
from deepstart.models.registry import count_parameters, create_model
from deepstart.models.weights import load_source
from deepstart.ship.bundle import load_model, read_meta, save_model
from deepstart.train.callbacks import (
    Callback,
    Checkpoint,
    GracefulInterrupt,
    Progress,
    load_checkpoint,
    restore_checkpoint,
)
from deepstart.train.distributed import Distributed, prepare_model, shutdown
from deepstart.train.extras import EMA, EarlyStopping, GradientClip, Lookahead, MaxTime
from deepstart.train.guard import DivergenceGuard
from deepstart.train.learner import Learner
from deepstart.train.losses import make_loss
from deepstart.train.lr_finder import lr_find
from deepstart.train.memory import find_batch_size
from deepstart.train.schedule import ScheduleSpec
from deepstart.train.tensorboard import TensorBoardLogger, summary_writer_class


class Interrupted(DeepstartError):
    """Training was stopped with Ctrl-C after saving a checkpoint."""


@dataclass
class RunResult:
    """What a finished run leaves: its directory, per-epoch history and test metrics."""

    run_dir: Path
    history: list[dict[str, Any]]
    test: dict[str, Any] | None
    learner: Learner
    # the validation split's scores at the end, when there is no test split to score
    valid: dict[str, Any] | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a CPU run repeats bit for bit."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_run_dir(out: str | Path, data_name: str, model_name: str) -> Path:
    """A fresh ``<out>/<YYYYmmdd-HHMMSS>-<data>-<model>`` directory (suffixed if taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{stamp}-{Path(data_name).name}-{model_name}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    path.mkdir(parents=True)
    return path


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    return load_dataset(
        cfg.name,
        data_dir=cfg.data_dir,
        valid_pct=cfg.valid_pct,
        seed=seed,
        size=cfg.size,
        channels=cfg.channels,
        resize=cfg.resize,
        **cfg.options,
    )


def build_model(cfg: ModelConfig, data: Dataset, seed: int) -> Any:
    """The registry model for ``data``'s channels, classes and size, initialised from
    ``seed`` (seeded here, so model init does not depend on how much data loading drew)."""
    torch.manual_seed(seed)
    return create_model(
        cfg.name,
        in_channels=data.channels,
        num_classes=data.num_classes,
        input_size=data.size,
        **cfg.options,
    )


def apply_pretrained(
    cfg: ModelConfig, model: Any, data: Dataset, log: Callable[[str], None]
) -> None:
    """Load ``cfg.pretrained`` into ``model`` and switch ``data`` to the normalisation the
    weights were trained with (ImageNet's for torchvision ResNets, (x - 127) / 128 for
    EfficientNet-Lite; the run's own for a deepstart run or bundle), so that the model sees
    inputs scaled as in pretraining.

    ``cfg.pretrained`` is a weights name of the model (``"imagenet"``: ``deepstart weights``),
    an http(s)/file URL, a deepstart run or bundle directory, or a weights file.
    """
    source = Path(str(cfg.pretrained)).expanduser()
    stats = None
    if source.is_dir():  # a deepstart run or bundle: its weights and its preprocessing
        prep = read_meta(source)["preprocess"]
        stats = (tuple(prep["mean"]), tuple(prep["std"]))
        report = load_pretrained(model, source / "model.safetensors", sha256=cfg.pretrained_sha256)
    else:  # a weights name, a URL (kept a string: Path() would eat its "//") or a file
        report = load_source(model, str(cfg.pretrained), sha256=cfg.pretrained_sha256)
    if stats is not None:  # a run's weights expect the run's normalisation, not the family's
        report.mean, report.std = stats
    log(str(report))
    if stats is None and report.mean is not None:
        stats = (tuple(report.mean), tuple(report.std))
    if stats is not None and len(stats[0]) == data.channels:
        data.mean, data.std = list(stats[0]), list(stats[1])
        data.notes.append(
            "normalisation: the pretrained weights' mean/std "
            f"{[round(m, 4) for m in data.mean]} / {[round(v, 4) for v in data.std]}, "
            "not this data's"
        )
        log(f"  note: {data.notes[-1]}")


def _say(text: str, stream: TextIO | None) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


def describe(data: Dataset) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in data.summary()["splits"].items())
    h, w = data.size
    return (
        f"data {data.name}: {splits}; {data.num_classes} classes; {data.channels}x{h}x{w}; "
        f"mean {_fmt_list(data.mean)} std {_fmt_list(data.std)}"
    )


def _fmt_list(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"


def format_eval(res: dict[str, Any]) -> str:
    return (
        f"{res['split']} accuracy {res['accuracy']:.4f} on {res['n']} images; loss "
        f"{res['loss']:.4f} nats = {res['loss_bits']:.3f} bits (chance {res['chance_bits']:.3f})"
    )


def train_run(
    cfg: RunConfig,
    *,
    callbacks: list[Callback] | None = None,
    quiet: bool = False,
    resume: str | Path | None = None,
) -> RunResult:
    """Load the data, build the model, train, score the test split and write the run dir.

    With ``resume`` (a run directory) the run continues from its ``checkpoints/last.pt``
    in the same directory; ``cfg`` should be the run's own (see :func:`load_run_config`).

    Example:
        >>> res = train_run(RunConfig(data=DataConfig("shapes"), model=ModelConfig("vgg_small")))
        >>> res.test["accuracy"]
    """
    tc = cfg.train
    dist = Distributed.from_env(tc.device, timeout=tc.dist_timeout, sync_bn=tc.sync_bn)
    try:
        return _train(cfg, callbacks, quiet, resume, dist)
    finally:
        shutdown()


def _train(
    cfg: RunConfig,
    callbacks: list[Callback] | None,
    quiet: bool,
    resume: str | Path | None,
    dist: Distributed | None,
) -> RunResult:
    tc = cfg.train
    main = dist is None or dist.is_main  # only rank 0 prints and writes
    stream = None if quiet or not main else sys.stdout
    if tc.tensorboard:
        summary_writer_class()  # a missing extra fails now, not after loading the data
    seed_everything(tc.seed)
    data = load_data(cfg.data, tc.seed)
    _say(describe(data), stream)
    for note in data.notes:
        _say(f"  note: {note}", stream)
    data, tc = _debug_modes(data, tc, stream)
    model = build_model(cfg.model, data, tc.seed)
    if cfg.model.pretrained and resume is None:  # a resumed run has its weights already
        apply_pretrained(cfg.model, model, data, lambda m: _say(m, stream))
    model = prepare_model(model, dist)
    device = dist.device if dist is not None else resolve_device(tc.device)
    n_params = count_parameters(model)
    where = f"device {device}"
    if dist is not None:
        bs = tc.batch_size
        where = f"{dist.world} processes on {device.type}, global batch {dist.world} x {bs}"
        if isinstance(bs, int):
            where += f" = {dist.world * bs}"
        if tc.sync_bn and not dist.sync_bn:
            _say("  note: --sync-bn needs CUDA; each process normalises its own part", stream)
    _say(f"model {cfg.model.name}: {n_params:,} parameters; {where}", stream)
    # (Not in a distributed run: there the other ranks are the other running threads.)
    busy = busy_cpu_note(device) if resume is None and dist is None else None
    if busy is not None:
        _say(f"  note: {busy}", stream)
    if resume is not None:
        run_dir = Path(resume)
    elif main:
        out = tempfile.mkdtemp(prefix="deepstart-fast-dev-run-") if tc.fast_dev_run else tc.out
        run_dir = new_run_dir(out, cfg.data.name, cfg.model.name)
        _write_config(run_dir, cfg, data, model, n_params, device, dist)
    if dist is not None and resume is None:
        run_dir = Path(dist.broadcast(str(run_dir) if main else None))  # one run dir
    log = (lambda m: _say(m, stream)) if stream is not None else (lambda m: None)
    interrupt = GracefulInterrupt(log=lambda m: _say(m, stream or sys.stderr))
    cbs: list[Callback] = [Progress(tc.progress if stream is not None else "none", stream)]
    if tc.checkpoint:  # on every rank: rank 0 writes, the others wait for it at epoch ends
        cbs.append(Checkpoint(run_dir / "checkpoints", every_minutes=tc.checkpoint_minutes))
    cbs.append(interrupt)
    learn = Learner(
        data,
        model,
        loss_func=make_loss(
            label_smoothing=tc.label_smoothing,
            class_weights=tc.class_weights,
            num_classes=data.num_classes,
            train_labels=data.train.labels,
        ),
        opt=tc.opt,
        lr=tc.lr if isinstance(tc.lr, float) else 1e-3,
        wd=tc.wd,
        momentum=tc.momentum,
        nesterov=tc.nesterov,
        norm_bias_lr=tc.norm_bias_lr,
        batch_size=tc.batch_size if isinstance(tc.batch_size, int) else 128,
        device=device,
        callbacks=cbs,
        seed=tc.seed,
        precision=tc.precision,
        log=log,
        guard=False,  # added with the other option callbacks, after the LR finder
        augment=tc.augment,
        precompute=tc.precompute,
        dist=dist,
    )
    if tc.freeze:
        learn.freeze()
    ckpt = None
    if resume is not None:
        ckpt_path = run_dir / "checkpoints" / "last.pt"
        if not ckpt_path.is_file():
            raise DataError(f"{run_dir}: no checkpoints/last.pt to resume from")
        ckpt = load_checkpoint(ckpt_path)
        # the optimizer in the checkpoint holds the params that phase trained
        if tc.fine_tune and int(ckpt.get("phase", 0)) == 0:
            learn.freeze()
        elif tc.fine_tune and tc.keep_frozen:
            learn.freeze_to(tc.keep_frozen, train_bn=False)
    if tc.batch_size == "auto" and resume is None:
        if dist is not None:
            raise ConfigError("--batch-size auto is not supported in distributed runs yet")
        learn.batch_size = find_batch_size(learn)
    lr = _choose_lr(learn, tc, run_dir, resume is not None, log, main)
    learn.add_callbacks([*option_callbacks(tc, log), *(callbacks or [])])
    if tc.tensorboard and main:
        learn.add_callbacks([TensorBoardLogger(run_dir / "tensorboard")])
    start_epoch, restart_at = 0, 0
    if ckpt is not None:
        start_epoch, restart_at = restore_checkpoint(learn, ckpt)
        where = f"epoch {start_epoch + 1}" + (f" batch {restart_at + 1}" if restart_at else "")
        if tc.fine_tune:
            where += " of the frozen phase" if learn.phase == 0 else " of the unfrozen phase"
        _say(f"resuming {run_dir} at {where} of {tc.epochs}", stream)
        if main:  # metrics.jsonl may hold a row written after the checkpoint: rewrite it
            with atomic_write(run_dir / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in learn.recorder.history)
    if main:
        learn.recorder.path = run_dir / "metrics.jsonl"
    start = time.perf_counter()
    fit_kw = {"start_epoch": start_epoch, "restart_at": restart_at}
    if tc.fine_tune:
        learn.fine_tune(
            tc.epochs,
            lr,
            freeze_epochs=tc.freeze_epochs,
            keep_frozen=tc.keep_frozen,
            keep_better=tc.keep_better,
            start_phase=learn.phase,
            **fit_kw,
        )
    elif start_epoch < tc.epochs:
        if tc.schedule == "one_cycle":
            learn.fit_one_cycle(tc.epochs, lr, pct_start=tc.pct_start, **fit_kw)
        else:
            spec = ScheduleSpec(kind=tc.schedule, pct_start=tc.pct_start)
            learn.fit(tc.epochs, lr, schedule=spec, **fit_kw)
    if dist is not None:
        # Every collective is done: leave the group together, then rank 0 scores, saves and
        # reports on its own (no other rank waits on it, so no timeout can strike).
        dist.barrier()
        shutdown()
        learn.dist = None
    if interrupt.interrupted:
        saved = f"saved {interrupt.saved}; " if interrupt.saved else "no checkpoint saved; "
        raise Interrupted(
            f"stopped at epoch {learn.epoch + 1} batch {learn.iter + 1}; {saved}"
            f"resume with: deepstart train --resume {run_dir}"
        )
    train_seconds = time.perf_counter() - start
    if not main:
        return RunResult(run_dir, learn.recorder.history, None, learn)
    if tc.fast_dev_run:
        row = learn.recorder.history[-1] if learn.recorder.history else {}
        _say(
            f"fast-dev-run passed: one training and one validation batch ran (train_loss "
            f"{row.get('train_loss', float('nan')):.4f}); nothing was saved",
            stream,
        )
        shutil.rmtree(run_dir.parent, ignore_errors=True)
        return RunResult(run_dir, learn.recorder.history, None, learn)
    result = _finish(learn, data, run_dir, len(learn.recorder.history), train_seconds, stream)
    final = result.test if result.test is not None else result.valid
    scored = "test" if data.test is not None else "valid" if data.valid is not None else None
    if tc.tta and scored is not None:
        # flip for photos; a preset that never flips (digits) is its own TTA
        plain = (result.test if scored == "test" else result.valid) or {}
        res = learn.tta(scored, augment=tc.augment or "flip", plain=plain.get("probs"))
        line = format_eval(res).replace(f"{scored} accuracy", f"{scored} accuracy with TTA", 1)
        _say(line, stream)
        results = json.loads((run_dir / "results.json").read_text())
        results[f"{scored}_tta"] = {
            k: v for k, v in res.items() if k not in ("probs", "pred", "target")
        }
        _write_json(run_dir / "results.json", results)
    if tc.report:
        from deepstart.report import build_report

        build_report(run_dir, learn=learn, log=log, scored=final)
    return result


def option_callbacks(tc: TrainConfig, log: Callable[[str], None]) -> list[Callback]:
    """The callbacks that TrainConfig's options ask for."""
    cbs: list[Callback] = []
    if tc.guard:  # replaces the Learner's default guard (same kind, the configured tries)
        cbs.append(DivergenceGuard(max_tries=tc.guard_tries, log=log))
    if tc.grad_clip:
        cbs.append(GradientClip(max_norm=tc.grad_clip))
    if tc.ema:
        cbs.append(EMA(decay=tc.ema))
    if tc.lookahead:
        cbs.append(Lookahead())
    if tc.early_stop:
        cbs.append(
            EarlyStopping(
                monitor=tc.monitor, patience=tc.early_stop, min_delta=tc.min_delta, log=log
            )
        )
    if tc.max_time:
        cbs.append(MaxTime(tc.max_time, log=log))
    return cbs


def _choose_lr(
    learn: Learner,
    tc: TrainConfig,
    run_dir: Path,
    resuming: bool,
    log: Callable[[str], None],
    main: bool = True,
) -> float:
    """The LR to train with: as given, or the LR finder's valley for ``lr="auto"``
    (recorded in lr_find.json and lr_find.png; a resumed run reuses the recorded value)."""
    if tc.lr != "auto":
        return float(tc.lr)
    record = run_dir / "lr_find.json"
    if resuming and record.is_file():
        return float(json.loads(record.read_text())["chosen"])
    # Every rank sweeps (the losses are reduced over ranks, so all choose the same LR).
    res = lr_find(learn, plot=run_dir / "lr_find.png" if main else None)
    lr = float(res.suggestions["valley"])
    if main:
        _write_json(record, {"chosen": lr, "rule": "valley", **res.to_dict()})
    shown = ", ".join(f"{k} {v:.1e}" for k, v in res.suggestions.items())
    log(f"lr auto: LR finder suggests {shown}; using valley {lr:.2e} (plot {run_dir}/lr_find.png)")
    return lr


def _debug_modes(
    data: Dataset, tc: TrainConfig, stream: TextIO | None
) -> tuple[Dataset, TrainConfig]:
    """Cut the data for --fast-dev-run and --overfit-batches."""
    bs = tc.batch_size if isinstance(tc.batch_size, int) else 128
    if tc.fast_dev_run:
        cut = dataclasses.replace(
            data,
            train=data.train.subset(range(min(bs, len(data.train)))),
            valid=data.valid.subset(range(min(bs, len(data.valid)))),
            test=None,
        )
        tc = dataclasses.replace(
            tc, epochs=1, checkpoint=False, lr=1e-3 if tc.lr == "auto" else tc.lr
        )
        return cut, tc
    if tc.overfit_batches:
        fixed = data.train.subset(range(min(bs * tc.overfit_batches, len(data.train))))
        _say(
            f"  overfit-batches: training and validating on the same {len(fixed)} images "
            f"({tc.overfit_batches} batches); expect accuracy near 1",
            stream,
        )
        return dataclasses.replace(data, train=fixed, valid=fixed), tc
    return data, tc


def lr_find_run(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    tc: TrainConfig,
    **kwargs: Any,
) -> Any:
    """``deepstart lr-find``: the LR finder on a fresh model; prints nothing itself."""
    seed_everything(tc.seed)
    data = load_data(data_cfg, tc.seed)
    model = build_model(model_cfg, data, tc.seed)
    learn = Learner(
        data,
        model,
        opt=tc.opt,
        wd=tc.wd,
        batch_size=int(tc.batch_size),
        device=tc.device,
        seed=tc.seed,
    )
    return lr_find(learn, **kwargs)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The RunConfig a run directory was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise DataError(f"{run_dir}: no config.json (is it a run directory?)")
    raw = json.loads(path.read_text())
    return RunConfig.from_dict({k: v for k, v in raw.items() if k in ("data", "model", "train")})


def _write_config(
    run_dir: Path,
    cfg: RunConfig,
    data: Dataset,
    model: Any,
    n_params: int,
    device: Any,
    dist: Distributed | None = None,
) -> None:
    _write_json(
        run_dir / "config.json",
        {
            **cfg.to_dict(),
            "resolved": {
                "dataset": data.summary(),
                "arch": model.arch,
                "parameters": n_params,
                "preprocess": data.preprocess.to_dict(),
                "device": str(device),
                "world_size": dist.world if dist is not None else 1,
                "global_batch_size": (
                    cfg.train.batch_size * dist.world
                    if dist is not None and isinstance(cfg.train.batch_size, int)
                    else cfg.train.batch_size
                ),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        },
    )


def _finish(
    learn: Learner,
    data: Dataset,
    run_dir: Path,
    epochs: int,
    train_seconds: float,
    stream: TextIO | None,
) -> RunResult:
    # probs: reused by TTA (its plain view) and the report; dropped from results.json
    test = learn.evaluate("test", probs=True) if data.test is not None else None
    if test is not None:
        _say(format_eval(test), stream)
    # A folder of your own photos often has train/ (and valid/) only: score the validation
    # split then, and say so, rather than end a run with no number at all.
    valid = learn.evaluate("valid", probs=True) if test is None and data.valid is not None else None
    if valid is not None:
        _say(format_eval(valid) + " (no test split: the validation split)", stream)
    save_model(
        learn.model,
        run_dir,
        classes=data.classes,
        preprocess=data.preprocess,
        extra={"dataset": data.name, "test": _brief(test), "input_stats": _train_stats(learn)},
    )
    _write_json(
        run_dir / "results.json",
        {
            "test": _no_tensors(test),
            **({"valid": _no_tensors(valid)} if valid is not None else {}),
            "train_seconds": round(train_seconds, 3),
            "epochs": epochs,
        },
    )
    # Per-batch loss and LR, for the curves of the report (metrics.jsonl has one row per epoch).
    rec, per_epoch = learn.recorder, len(getattr(learn, "train_dl", ()))
    _write_json(
        run_dir / "batches.json",
        {"loss": rec.batch_losses, "lr": rec.batch_lrs, "per_epoch": per_epoch},
    )
    _say(f"run directory: {run_dir}", stream)
    return RunResult(run_dir, learn.recorder.history, test, learn, valid)


def _train_stats(learn: Learner) -> dict | None:
    """The training images' input statistics (for the mismatch check of later evaluations)."""
    from deepstart.data.dataset import ImageSet
    from deepstart.data.mismatch import input_stats

    if learn.train_stats is None and isinstance(getattr(learn.data, "train", None), ImageSet):
        learn.train_stats = input_stats(learn.data.train.images)
    return learn.train_stats


def load_run_learner(
    run_dir: str | Path,
    *,
    data: DataConfig | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> Learner:
    """A Learner holding a run's saved model and a dataset to use it on, with the model's
    own preprocessing (the training normalisation, size and channels), not the new data's.

    ``data`` defaults to the dataset the run trained on (same seed, so the same split).
    Evaluations compare each split with the training images' ``input_stats`` saved in
    ``model.json`` and warn through ``log`` when it looks prepared differently.
    """
    run_dir = Path(run_dir)
    saved = load_model(run_dir, device="cpu")
    seed, cfg_data = 0, None
    if (run_dir / "config.json").is_file():
        cfg = load_run_config(run_dir)
        seed, cfg_data = cfg.train.seed, cfg.data
    data_cfg = data or cfg_data
    if data_cfg is None:
        raise DataError(f"{run_dir}: no config.json; say which data to use (--data)")
    dataset = load_data(data_cfg, seed)
    if dataset.classes != saved.classes:
        raise DataError(
            f"dataset classes {dataset.classes} differ from the model's {saved.classes}"
        )
    stats = saved.meta.get("input_stats")
    return Learner(
        dataset,
        saved.model,
        device=device,
        preprocess=saved.preprocess,
        seed=seed,
        guard=False,
        log=log,
        train_stats=stats,
        # Without saved stats, data.train stands for the training images only when it is
        # the run's own dataset.
        input_check=stats is not None or data is None,
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    data: DataConfig | None = None,
    split: str = "test",
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score a run's saved model on a split of a dataset (see :func:`load_run_learner`)."""
    return load_run_learner(run_dir, data=data, device=device, log=log).evaluate(split)


def _no_tensors(res: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if res is None else {k: v for k, v in res.items() if k != "probs"}


def _brief(res: dict[str, Any] | None) -> dict[str, Any] | None:
    if res is None:
        return None
    return {k: res[k] for k in ("split", "n", "loss", "accuracy")}


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
