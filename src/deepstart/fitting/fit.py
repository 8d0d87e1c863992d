"""``deepstart fit-function``: learn y = f(x) with the Learner, and watch it converge.

A fit runs in phases on one Learner: the main optimizer (Adam with one-cycle by default),
then, with ``polish``, LBFGS from where it stopped (:meth:`Learner.set_optimizer`). A full
batch is one step, so one epoch (a validation and a progress line) groups about a tenth of a
phase's steps. :class:`FitRecord` keeps what the pictures need: the fit on a grid at chosen
steps, the loss of every step, the epoch rows with their global step.

Run directory ``runs/<time>-fit-<formula>/``:
    config.json            the FitConfig, the data summary, the model arch, versions
    metrics.jsonl          one row per epoch: phase, step, train_loss, valid_loss, max_error,
                           rms_error, lr, seconds
    results.json           the test scores and the phases (steps, seconds)
    model.safetensors + model.json   the fitted model (``load_model`` gives it back)
    fit_progress.png/.gif  the fit at chosen steps over the truth
    loss.png, error.png    the loss per step; |f(x) - y| along x
``--compare`` (:mod:`deepstart.fitting.compare`) writes compare.json and compare.png.

Example:
    >>> res = fit_function(FitConfig(expression="sin(3*x) + 0.3*x"))
    >>> res.test["max_error"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from deepstart.config import FitConfig
from deepstart.data.tensors import TensorData, TensorSet
from deepstart.device import seed_everything
from deepstart.errors import ConfigError
from deepstart.fitting.data import csv_data, function_data
from deepstart.fitting.expression import parse_expression
from deepstart.models.registry import count_parameters, create_model, get_model_info
from deepstart.run.rundir import RunDir, write_json
from deepstart.ship.bundle import save_model
from deepstart.train.callbacks import Callback, Progress
from deepstart.train.learner import Learner
from deepstart.train.regression import describe_loss, make_regression_loss

EPOCHS_PER_PHASE = 10  # progress lines (and validations) per phase
PLOT_POINTS = 500  # grid the pictures are drawn on
GRID_FRAMES, GIF_FRAMES = 9, 40


@dataclass(frozen=True)
class Phase:
    """One fit of a run: ``name`` (the optimizer), its steps, LR and schedule."""

    name: str
    steps: int
    lr: float
    schedule: str


def phases(cfg: FitConfig) -> list[Phase]:
    """The fits ``cfg`` asks for: the main optimizer, then the LBFGS polish if any.

    Example:
        >>> [p.name for p in phases(FitConfig())]
        ['adam', 'lbfgs']
    """
    schedule = "constant" if cfg.opt == "lbfgs" else cfg.schedule
    out = [Phase(cfg.opt, cfg.steps, cfg.peak_lr, schedule)]
    if cfg.polish and cfg.opt != "lbfgs":
        out.append(Phase("lbfgs", cfg.polish, 1.0, "constant"))
    return out


def load_fit_data(cfg: FitConfig) -> TensorData:
    """The points of ``cfg``: sampled from its formula, or read from its CSV."""
    if cfg.csv is not None:
        return csv_data(cfg.csv, seed=cfg.seed)
    return function_data(
        cfg.expression,
        domain=cfg.domain,
        samples=cfg.samples,
        noise=cfg.noise,
        sampling=cfg.sampling,
        seed=cfg.seed,
    )


def build_fit_model(cfg: FitConfig, data: TensorData) -> torch.nn.Module:
    """The registry model of ``cfg``, scaled to the data's x and y ranges, initialised from
    ``cfg.seed``."""
    if get_model_info(cfg.model).task != "regression":
        raise ConfigError(f"{cfg.model} is not a regression model; see deepstart models")
    torch.manual_seed(cfg.seed)
    return create_model(
        cfg.model,
        in_features=data.in_features,
        out_features=data.out_features,
        activation=cfg.activation,
        width=cfg.width,
        depth=cfg.depth,
        fourier=cfg.fourier,
        w0=cfg.w0,
        x_range=data.x_range,
        y_range=data.y_range,
    )


class FitRecord(Callback):
    """Records a fit over all its phases: the model's output on ``x`` at the global steps in
    ``steps`` (0 = before training), every step's loss, and each epoch's row with its phase
    and global step. Set ``phase`` before each fit."""

    order = 15  # after the Recorder (10) has made the epoch's row

    def __init__(self, x: torch.Tensor, steps: Sequence[int] = ()) -> None:
        self.x = x  # (M, D) picture grid
        self.steps = set(steps)
        self.phase, self.offset = "", 0
        self.frames: dict[int, tuple[str, np.ndarray]] = {}
        self._losses: dict[int, torch.Tensor] = {}  # kept on the device until read
        self.rows: list[dict[str, Any]] = []

    @torch.no_grad()
    def output(self) -> np.ndarray:
        """The model's first output column on the grid, ``(M,)``."""
        model = self.learn.model
        was = model.training
        model.eval()
        y = model(self.x.to(self.learn.device))[:, 0].float().cpu().numpy()
        model.train(was)
        return y

    def before_fit(self) -> None:
        if 0 in self.steps and 0 not in self.frames:
            self.frames[0] = ("start", self.output())

    def after_step(self) -> None:
        step = self.offset + self.learn.train_iter
        self._losses[step] = self.learn.loss.detach()  # redone steps (guard) overwrite
        if step in self.steps:
            self.frames[step] = (self.phase, self.output())

    def after_epoch(self) -> None:
        step = self.offset + self.learn.train_iter
        self.rows = [r for r in self.rows if r["step"] < step]  # a restored epoch is redone
        row = dict(self.learn.recorder.history[-1])
        row.pop("epoch", None)
        self.rows.append({"phase": self.phase, "step": step, **row})

    def after_fit(self) -> None:
        self.offset += self.learn.train_iter

    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, training losses) in step order."""
        steps = sorted(self._losses)
        if not steps:
            return np.zeros(0), np.zeros(0)
        values = torch.stack([self._losses[s].float() for s in steps]).cpu().numpy()
        return np.array(steps), values


def frame_steps(total: int, marks: Sequence[int], n: int) -> list[int]:
    """About ``n`` steps in [0, total] to draw: 0, the ``marks`` (phase ends), and the rest
    spread geometrically, since a fit changes most in its first steps.

    Example:
        >>> frame_steps(400, [300], 6)
        [0, 1, 7, 54, 300, 400]
    """
    chosen = {0, total, *marks}
    k = max(n - len(chosen), 1)
    for v in np.geomspace(1, max(total, 1), k + 1)[:-1]:
        chosen.add(int(np.rint(v)))
    return sorted(s for s in chosen if 0 <= s <= total)


def _plan(data: TensorData, phase: Phase, batch_size: int) -> tuple[int, int]:
    """(passes per epoch, epochs) so the phase takes about ``phase.steps`` steps."""
    n = len(data.train)
    per_pass = 1 if batch_size >= n else n // batch_size  # the Learner drops the remainder
    passes = max(round(phase.steps / (EPOCHS_PER_PHASE * per_pass)), 1)
    epochs = max(round(phase.steps / (passes * per_pass)), 1)
    return passes, epochs


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: as they are), then put them back."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_learner(
    cfg: FitConfig,
    data: TensorData,
    callbacks: Sequence[Callback] = (),
    log: Any = None,
) -> Learner:
    """A Learner for ``cfg``: its model, loss and optimizer, fp32, no weight decay (it would
    pull the fit off the function), full batch unless ``cfg.batch_size``."""
    return Learner(
        data,
        build_fit_model(cfg, data),
        loss_func=make_regression_loss(cfg.loss),
        opt=cfg.opt,
        wd=0.0,
        batch_size=cfg.batch_size or len(data.train),
        device=cfg.device,
        callbacks=callbacks,
        seed=cfg.seed,
        precision="fp32",  # a fit to 1e-3 and below needs fp32, not bf16's 3 digits
        log=log or (lambda m: None),
    )


def train_fit(
    cfg: FitConfig,
    data: TensorData,
    *,
    record: FitRecord | None = None,
    progress: str = "none",
    stream: TextIO | None = None,
    after_phase: Any = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[Learner, list[dict[str, Any]]]:
    """Build the learner and run the phases of ``cfg`` (with ``cfg.threads`` torch threads).

    Returns the learner and one dict per phase (name, steps, seconds, lr, schedule).
    ``after_phase(learn, phase)`` is called after each phase (outside the timing).
    """
    log = (lambda m: print(m, file=stream, flush=True)) if stream is not None else None
    cbs: list[Callback] = [Progress(progress if stream is not None else "none", stream)]
    cbs += [*([record] if record is not None else []), *callbacks]
    learn = fit_learner(cfg, data, cbs, log)
    bs, done = learn.batch_size, []
    with torch_threads(cfg.threads):
        for i, ph in enumerate(phases(cfg)):
            if i:
                learn.set_optimizer(ph.name)
            passes, epochs = _plan(data, ph, bs)
            learn.data = dataclasses.replace(data, passes=passes)
            if record is not None:
                record.phase = ph.name
            sched = "one-cycle up to" if ph.schedule == "one_cycle" else f"{ph.schedule},"
            learn.log(
                f"phase {i + 1}: {ph.name}, {sched} lr {ph.lr:g}, {epochs} epochs of {passes} "
                f"pass{'es' if passes > 1 else ''} over {len(data.train)} points in batches "
                f"of {min(bs, len(data.train))}"
            )
            start = time.perf_counter()
            if ph.schedule == "one_cycle":
                learn.fit_one_cycle(epochs, ph.lr)
            else:
                learn.fit(epochs, ph.lr, schedule=ph.schedule)
            seconds = time.perf_counter() - start
            done.append({**dataclasses.asdict(ph), "steps": learn.train_iter, "seconds": seconds})
            if after_phase is not None:
                after_phase(learn, ph)
    learn.data = data
    return learn, done


@dataclass
class FitResult:
    """What ``fit_function`` leaves: the run directory, the learner, test scores, phases."""

    run_dir: Path
    learner: Learner
    test: dict[str, Any]
    phases: list[dict[str, Any]]
    record: FitRecord


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", Path(text).name).strip("_")[:40] or "f"


def truth_grid(cfg: FitConfig, data: TensorData) -> tuple[torch.Tensor, np.ndarray | None]:
    """The picture grid ``(M, 1)`` and the true f on it (None for CSV data)."""
    lo, hi = data.x_range if cfg.csv is not None else cfg.domain
    x = torch.linspace(float(lo), float(hi), PLOT_POINTS, dtype=torch.float64)
    truth = None if cfg.csv is not None else parse_expression(cfg.expression)(x).numpy()
    return x.float()[:, None], truth


def _reference(data: TensorData) -> TensorSet:
    """The points errors are drawn on: the dense truth grid, or all the data, sorted."""
    if data.test is not None:
        return data.test.sorted()
    both = TensorSet(
        torch.cat([data.train.x, data.valid.x]), torch.cat([data.train.y, data.valid.y])
    )
    return both.sorted()


def _errors(learn: Learner, points: TensorSet) -> np.ndarray:
    return (learn.predict(points.x)[:, 0] - points.y[:, 0]).abs().double().numpy()


def _say(text: str, stream: TextIO | None) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


def write_fit_config(run_dir: Path, cfg: FitConfig, data: TensorData, model: Any, **more) -> None:
    write_json(
        run_dir / "config.json",
        {
            "fit": cfg.to_dict(),
            "resolved": {
                "data": data.summary(),
                "arch": getattr(model, "arch", None),
                "parameters": count_parameters(model),
                "device": cfg.device,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **more,
            },
        },
    )


def fit_function(cfg: FitConfig, *, quiet: bool = False) -> FitResult:
    """Fit ``cfg``'s function, print the progress, and write the run directory (see the
    module note) with its pictures.

    Example:
        >>> res = fit_function(FitConfig(expression="sin", steps=300, polish=100))
        >>> res.test["max_error"] < 1e-3
        True
    """
    stream = None if quiet else sys.stdout
    seed_everything(cfg.seed)
    data = load_fit_data(cfg)
    _say(f"fitting {data.name}: " + "; ".join(data.notes), stream)
    name = data.name if cfg.csv is not None else str(parse_expression(cfg.expression))
    run_dir = RunDir.create(cfg.out, "fit", slug(name)).path
    x_plot, truth = truth_grid(cfg, data)
    ph = phases(cfg)
    total = sum(p.steps for p in ph)
    marks = list(np.cumsum([p.steps for p in ph]))[:-1]
    grid_at = frame_steps(total, marks, GRID_FRAMES)
    steps_to_draw = {*grid_at, *frame_steps(total, marks, GIF_FRAMES)} if cfg.pictures else ()
    record = FitRecord(x_plot, sorted(steps_to_draw))
    reference = _reference(data)
    earlier: dict[str, np.ndarray] = {}

    def after_phase(learn: Learner, phase: Phase) -> None:
        if phase is not ph[-1] and cfg.pictures:
            earlier[phase.name] = _errors(learn, reference)

    learn, done = train_fit(
        cfg,
        data,
        record=record,
        progress=cfg.progress,
        stream=stream,
        after_phase=after_phase,
    )
    test = learn.evaluate("test")
    steps = sum(p["steps"] for p in done)
    seconds = sum(p["seconds"] for p in done)
    split = "test grid" if data.test is not None else "validation points"
    _say(
        f"{name}: max |f(x) - y| {test['max_error']:.2e}, rms {test['rms_error']:.2e} on "
        f"{test['n']:,} {split}; {steps} steps in {seconds:.2f} s",
        stream,
    )
    write_fit_config(run_dir, cfg, data, learn.model)
    RunDir(run_dir).write_metrics(record.rows)
    write_json(
        run_dir / "results.json",
        {"test": test, "phases": done, "steps": steps, "train_seconds": round(seconds, 3)},
    )
    save_model(
        learn.model,
        run_dir,
        classes=[],
        preprocess=None,
        extra={"task": "regression", "data": data.name, "test": test},
    )
    if cfg.pictures:
        written = _draw(
            data, learn, record, done, reference, earlier, x_plot, truth, grid_at, run_dir
        )
        _say("pictures: " + ", ".join(p.name for p in written), stream)
    _say(f"run directory: {run_dir}", stream)
    return FitResult(run_dir, learn, test, done, record)


def _draw(data, learn, record, done, reference, earlier, x_plot, truth, grid_at, run_dir) -> list:
    from deepstart.fitting import plots as fp

    x = x_plot[:, 0].numpy()
    samples = (data.train.x[:, 0].numpy(), data.train.y[:, 0].numpy())
    frames = [fp.Frame(s, *record.frames[s]) for s in sorted(record.frames)]
    marks = list(np.cumsum([p["steps"] for p in done]))
    final = record.offset
    if final not in record.frames:  # a phase ended early or ran over its plan
        frames.append(fp.Frame(final, done[-1]["name"], record.output()))
    grid = [f for f in frames if f.step in grid_at or f.step == final]
    title = f"{data.name}: the fit (blue) over the truth (grey) and the samples (orange)"
    written = [
        fp.fit_progress_grid(
            x, grid, run_dir / "fit_progress.png", truth=truth, samples=samples, title=title
        ),
        fp.fit_progress_gif(
            x, frames, run_dir / "fit_progress.gif", truth=truth, samples=samples, title=data.name
        ),
    ]
    steps, losses = record.losses()
    phase_ends = [(p["name"], int(m)) for p, m in zip(done, marks)]
    written.append(
        fp.loss_plot(
            steps,
            losses,
            record.rows,
            run_dir / "loss.png",
            phases=phase_ends,
            loss_name=describe_loss(learn.loss_func),
        )
    )
    before = next(iter(earlier.items()), None)
    written.append(
        fp.error_plot(
            reference.x[:, 0].numpy(),
            _errors(learn, reference),
            run_dir / "error.png",
            sample_x=samples[0],
            earlier=(f"after {before[0]}", before[1]) if before else None,
            label=f"after {done[-1]['name']}",
        )
    )
    return written
