"""A whole run from a config: data, model, training, scores and the run directory.

This is what ``deepstart train`` calls; the steps are open to Python users who want to change
one of them: :mod:`deepstart.run.build` (data, model, pretrained weights),
:mod:`deepstart.run.resolve` (settle "auto"), :mod:`deepstart.run.options` (config -> Learner
and callbacks), :mod:`deepstart.run.rundir` (the files; see there for the layout).
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepstart.config import RunConfig, TrainConfig
from deepstart.device import busy_cpu_note, resolve_device, resolve_precision, seed_everything
from deepstart.errors import DataError, DeepstartError
from deepstart.models.pretrained import record_source
from deepstart.models.registry import count_parameters
from deepstart.recipes.choose import faster_recipe
from deepstart.run.build import (
    apply_pretrained,
    build_model,
    debug_cut,
    describe,
    load_data,
    lr_find_run,
)
from deepstart.run.options import learner_kwargs, option_callbacks
from deepstart.run.resolve import resolve_train
from deepstart.run.rundir import (
    BATCHES,
    RESULTS,
    RunDir,
    evaluate_run,
    load_run_config,
    load_run_learner,
)
from deepstart.ship.bundle import save_model
from deepstart.train.callbacks import (
    Callback,
    Checkpoint,
    GracefulInterrupt,
    Progress,
    load_checkpoint,
    restore_checkpoint,
)
from deepstart.train.distributed import Distributed, prepare_model, shutdown
from deepstart.train.evaluation import train_stats
from deepstart.train.learner import Learner
from deepstart.train.losses import make_loss
from deepstart.train.schedule import ScheduleSpec
from deepstart.train.tensorboard import TensorBoardLogger, summary_writer_class

__all__ = [  # what this module offers (the loaders are re-exported from rundir)
    "Interrupted",
    "RunResult",
    "apply_pretrained",
    "describe",
    "evaluate_run",
    "format_eval",
    "load_run_config",
    "load_run_learner",
    "lr_find_run",
    "seed_everything",
    "train_run",
]


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
        return _Run(cfg, callbacks, quiet, resume, dist).go()
    finally:
        shutdown()


class _Run:
    """The steps of one run, in order; each reads and sets a few attributes."""

    def __init__(
        self,
        cfg: RunConfig,
        callbacks: list[Callback] | None,
        quiet: bool,
        resume: str | Path | None,
        dist: Distributed | None,
    ) -> None:
        self.cfg, self.tc, self.extra, self.dist = cfg, cfg.train, callbacks or [], dist
        self.resume = None if resume is None else RunDir(resume)
        self.main = dist is None or dist.is_main  # only rank 0 prints and writes
        self.stream = None if quiet or not self.main else sys.stdout

    def say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def go(self) -> RunResult:
        self.prepare()
        try:
            self.open_run_dir()
            self.build_learner()
            return self.train_and_finish()
        except Exception as e:  # not a second Ctrl-C: that one leaves everything as it is
            if not isinstance(e, Interrupted):
                self.drop_unfinished()
            raise

    def drop_unfinished(self) -> None:
        """After a failure, remove a new run directory that holds nothing to resume or read."""
        run = getattr(self, "run", None)
        if run is None or self.resume is not None or not self.main or not run.path.is_dir():
            return
        if self.tc.fast_dev_run:  # its own temp folder, removed after a success too
            shutil.rmtree(run.path.parent, ignore_errors=True)
        elif not run.has_progress():
            shutil.rmtree(run.path, ignore_errors=True)
            self.say(f"removed {run.path}: the run failed before its first epoch ended")
        else:
            self.say(f"run directory kept: {run.path} (deepstart train --resume continues it)")

    # -- 1. data and model ----------------------------------------------------------------
    def prepare(self) -> None:
        cfg, tc, dist = self.cfg, self.tc, self.dist
        if tc.tensorboard:
            summary_writer_class()  # a missing extra fails now, not after loading the data
        # an unknown or absent device fails now, not after the data has loaded
        self.device = dist.device if dist is not None else resolve_device(tc.device)
        seed_everything(tc.seed)
        data = load_data(cfg.data, tc.seed)
        self.say(describe(data))
        for note in data.notes:
            self.say(f"  note: {note}")
        self.data, self.tc = debug_cut(data, tc, self.say)
        model = build_model(cfg.model, self.data, tc.seed)
        if cfg.model.pretrained and self.resume is None:  # a resumed run has its weights
            apply_pretrained(cfg.model, model, self.data, self.say)
        elif cfg.model.pretrained:
            record_source(model, cfg.model.pretrained)  # the guard fine-tunes, as before
        self.model = prepare_model(model, dist)
        self.n_params = count_parameters(self.model)
        where = f"device {self.device}"
        if dist is not None:
            bs = tc.batch_size
            kind = self.device.type
            where = f"{dist.world} processes on {kind}, global batch {dist.world} x {bs}"
            if isinstance(bs, int):
                where += f" = {dist.world * bs}"
            if tc.sync_bn and not dist.sync_bn:
                self.say("  note: --sync-bn needs CUDA; each process normalises its own part")
        self.say(f"model {cfg.model.name}: {self.n_params:,} parameters; {where}")
        # (Not in a distributed run: there the other ranks are the other running threads.)
        busy = busy_cpu_note(self.device) if self.resume is None and dist is None else None
        if busy is not None:
            self.say(f"  note: {busy}")

    # -- 2. the run directory ---------------------------------------------------------------
    def open_run_dir(self) -> None:
        tc, dist = self.tc, self.dist
        if self.resume is not None:
            self.run = self.resume
            if not self.run.last_checkpoint.is_file():
                raise DataError(f"{self.run.path}: no checkpoints/last.pt to resume from")
            return
        if self.main:
            out = tempfile.mkdtemp(prefix="deepstart-fast-dev-run-") if tc.fast_dev_run else tc.out
            self.run = RunDir.create(out, self.cfg.data.name, self.cfg.model.name)
        if dist is not None:  # one run directory for all ranks
            self.run = RunDir(dist.broadcast(str(self.run.path) if self.main else None))

    # -- 3. settle "auto", then the Learner -------------------------------------------------
    def make_learner(self, tc: TrainConfig, callbacks: list[Callback] | None = None) -> Learner:
        """A Learner for ``tc`` (concrete values), with the layers frozen as the run trains."""
        learn = Learner(
            self.data,
            self.model,
            **learner_kwargs(
                tc,
                loss_func=make_loss(
                    label_smoothing=tc.label_smoothing,
                    class_weights=tc.class_weights,
                    num_classes=self.data.num_classes,
                    train_labels=self.data.train.labels,
                ),
                device=self.device,
                # (probes show their LR sweep as the run shows its fit; never twice)
                callbacks=callbacks if callbacks is not None else [self.progress()],
                log=self.log,
                guard=False,  # added with the other option callbacks, after the LR finder
                dist=self.dist,
            ),
        )
        # fine_tune's first phase trains the head alone: so does an "auto" probe (its LR is
        # that phase's), and a resumed run's optimizer holds the params its phase trained.
        phase = int(self.ckpt.get("phase", 0)) if self.ckpt is not None else 0
        if tc.freeze or (tc.fine_tune and phase == 0):
            learn.freeze()
        elif tc.fine_tune and tc.keep_frozen:
            learn.freeze_to(tc.keep_frozen, train_bn=False)
        return learn

    def log(self, text: str) -> None:
        self.say(text)

    def progress(self) -> Progress:
        """The run's progress display; its time estimate names a much faster recipe of the
        dataset where there is one (recipes.choose.faster_recipe)."""
        shown = self.tc.progress if self.stream is not None else "none"
        data, recipe = self.cfg.data.name, self.tc.recipe
        return Progress(shown, self.stream, hint=lambda s: faster_recipe(data, recipe, s))

    def build_learner(self) -> None:
        tc, run = self.tc, self.run
        resuming = self.resume is not None
        self.ckpt = load_checkpoint(run.last_checkpoint) if resuming else None
        tc = resolve_train(
            tc,
            self.make_learner,
            run,
            resuming=resuming,
            distributed=self.dist is not None,
            main=self.main,
            log=self.log,
            model=self.cfg.model.name,
        )
        self.tc = tc
        if self.main and not resuming:
            run.write_config(dataclasses.replace(self.cfg, train=tc), self.resolved())
        self.interrupt = GracefulInterrupt(
            log=lambda m: print(m, file=self.stream or sys.stderr, flush=True)
        )
        cbs: list[Callback] = [self.progress()]
        if tc.checkpoint:  # on every rank: rank 0 writes, the others wait for it at epoch ends
            cbs.append(Checkpoint(run.checkpoints, every_minutes=tc.checkpoint_minutes))
        cbs.append(self.interrupt)
        learn = self.make_learner(tc, cbs)
        learn.add_callbacks([*option_callbacks(tc, self.log), *self.extra])
        if tc.tensorboard and self.main:
            learn.add_callbacks([TensorBoardLogger(run.file("tensorboard"))])
        self.learn = learn

    def resolved(self) -> dict[str, Any]:
        """config.json's ``resolved``: what the config alone does not say."""
        dist, tc = self.dist, self.tc
        world = dist.world if dist is not None else 1
        # settings asked as "auto" that resolve_train settled (train holds the values). Device
        # and precision stay "auto" in train, a policy that a resume on another machine
        # applies afresh; what they mean here is recorded below.
        asked = {
            k: "auto"
            for k, v in dataclasses.asdict(self.cfg.train).items()
            if v == "auto" and getattr(tc, k) != "auto"
        }
        amp = resolve_precision(tc.precision, self.device, getattr(self.data, "task", ""))
        return {
            "dataset": self.data.summary(),
            "arch": self.model.arch,
            "parameters": self.n_params,
            "preprocess": self.data.preprocess.to_dict(),
            "device": str(self.device),
            "world_size": world,
            "global_batch_size": tc.batch_size * world,
            "precision": str(amp).replace("torch.", "") if amp is not None else "fp32",
            "auto": asked,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # -- 4. train, then score, save and report ----------------------------------------------
    def train_and_finish(self) -> RunResult:
        tc, learn, run = self.tc, self.learn, self.run
        start_epoch, restart_at = 0, 0
        if self.ckpt is not None:
            start_epoch, restart_at = restore_checkpoint(learn, self.ckpt)
            where = f"epoch {start_epoch + 1}" + (f" batch {restart_at + 1}" if restart_at else "")
            if tc.fine_tune:
                where += " of the frozen phase" if learn.phase == 0 else " of the unfrozen phase"
            self.say(f"resuming {run.path} at {where} of {tc.epochs}")
            if self.main:  # metrics.jsonl may hold a row written after the checkpoint
                run.write_metrics(learn.recorder.history)
        if self.main:
            learn.recorder.path = run.metrics_path
        start = time.perf_counter()
        _fit(learn, tc, start_epoch, restart_at)
        if self.dist is not None:
            # Every collective is done: leave the group together, then rank 0 scores, saves
            # and reports on its own (no other rank waits on it, so no timeout can strike).
            self.dist.barrier()
            shutdown()
            learn.dist = None
        if self.interrupt.interrupted:
            saved = self.interrupt.saved
            saved = f"saved {saved}; " if saved else "no checkpoint saved; "
            raise Interrupted(
                f"stopped at epoch {learn.epoch + 1} batch {learn.iter + 1}; {saved}"
                f"resume with: deepstart train --resume {run.path}"
            )
        train_seconds = time.perf_counter() - start
        history = learn.recorder.history
        if not self.main:
            return RunResult(run.path, history, None, learn)
        if tc.fast_dev_run:
            row = history[-1] if history else {}
            self.say(
                "fast-dev-run passed: one training and one validation batch ran (train_loss "
                f"{row.get('train_loss', float('nan')):.4f}); nothing was saved"
            )
            shutil.rmtree(run.path.parent, ignore_errors=True)
            return RunResult(run.path, history, None, learn)
        result = self.score_and_save(train_seconds)
        if tc.report:
            from deepstart.report import build_report

            final = result.test if result.test is not None else result.valid
            build_report(run.path, learn=learn, log=self.log, scored=final, panels=tc.report_panels)
        return result

    def score_and_save(self, train_seconds: float) -> RunResult:
        learn, data, run, tc = self.learn, self.data, self.run, self.tc
        # probs: reused by TTA (its plain view) and the report; dropped from results.json
        test = learn.evaluate("test", probs=True) if data.test is not None else None
        if test is not None:
            self.say(format_eval(test))
        # A folder of your own photos often has train/ (and valid/) only: score the
        # validation split then, and say so, rather than end a run with no number at all.
        valid = None
        if test is None and data.valid is not None:
            valid = learn.evaluate("valid", probs=True)
            self.say(format_eval(valid) + " (no test split: the validation split)")
        save_model(
            learn.model,
            run.path,
            classes=data.classes,
            preprocess=data.preprocess,
            extra={"dataset": data.name, "test": _brief(test), "input_stats": train_stats(learn)},
        )
        results = {
            "test": _no_tensors(test),
            **({"valid": _no_tensors(valid)} if valid is not None else {}),
            "train_seconds": round(train_seconds, 3),
            "epochs": len(learn.recorder.history),
        }
        scored = "test" if test is not None else "valid" if valid is not None else None
        if tc.tta and scored is not None:
            # flip for photos; a preset that never flips (digits) is its own TTA
            plain = test if scored == "test" else valid
            res = learn.tta(scored, augment=tc.augment or "flip", plain=plain["probs"])
            line = format_eval(res).replace(f"{scored} accuracy", f"{scored} accuracy with TTA", 1)
            self.say(line)
            results[f"{scored}_tta"] = {
                k: v for k, v in res.items() if k not in ("probs", "pred", "target")
            }
        run.write_json(RESULTS, results)  # strict JSON: a class with no test images is null
        # Per-batch loss and LR, for the report's curves (metrics.jsonl has one row per epoch).
        rec, per_epoch = learn.recorder, len(getattr(learn, "train_dl", ()))
        run.write_json(
            BATCHES, {"loss": rec.batch_losses, "lr": rec.batch_lrs, "per_epoch": per_epoch}
        )
        self.say(f"run directory: {run.path}")
        return RunResult(run.path, learn.recorder.history, test, learn, valid)


def _fit(learn: Learner, tc: TrainConfig, start_epoch: int, restart_at: int) -> None:
    """Train as ``tc`` says: fine-tune, one-cycle or another schedule; from a checkpoint's
    epoch and batch when resuming."""
    fit_kw = {"start_epoch": start_epoch, "restart_at": restart_at}
    lr = float(tc.lr)
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


def _no_tensors(res: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if res is None else {k: v for k, v in res.items() if k != "probs"}


def _brief(res: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if res is None else {k: res[k] for k in ("split", "n", "loss", "accuracy")}
