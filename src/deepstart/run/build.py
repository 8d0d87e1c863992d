"""The first steps of a run: its data, its model, pretrained weights and the debug cuts
(and ``deepstart lr-find``, which takes the same first steps).

Each is a plain function of a config, so a Python user can take one step and change the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepstart.config import DataConfig, ModelConfig, TrainConfig
from deepstart.data.catalog import load_dataset
from deepstart.data.dataset import Dataset
from deepstart.device import seed_everything
from deepstart.models.pretrained import load_pretrained
from deepstart.models.registry import create_model
from deepstart.models.weights import load_source
from deepstart.ship.bundle import read_meta
from deepstart.train.learner import Learner
from deepstart.train.lr_finder import lr_find

# The batch size the debug modes cut the data by when the batch size is still "auto".
DEBUG_BATCH = 128


def load_data(cfg: DataConfig, seed: int) -> Dataset:
    """The dataset ``cfg`` names, split with ``seed``."""
    return load_dataset(
        cfg.name,
        data_dir=cfg.data_dir,
        valid_pct=cfg.valid_pct,
        seed=seed,
        size=cfg.size,
        channels=cfg.channels,
        resize=cfg.resize,
        normalize=cfg.normalize,
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


def describe(data: Dataset) -> str:
    """One line: splits, classes, shape and normalisation of a dataset."""
    splits = ", ".join(f"{k} {v}" for k, v in data.summary()["splits"].items())
    h, w = data.size
    return (
        f"data {data.name}: {splits}; {data.num_classes} classes; {data.channels}x{h}x{w}; "
        f"mean {_fmt_list(data.mean)} std {_fmt_list(data.std)}"
    )


def _fmt_list(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in xs) + "]"


def debug_cut(
    data: Dataset, tc: TrainConfig, log: Callable[[str], None]
) -> tuple[Dataset, TrainConfig]:
    """Cut the data (and settings) for ``fast_dev_run`` and ``overfit_batches``."""
    bs = tc.batch_size if isinstance(tc.batch_size, int) else DEBUG_BATCH
    if tc.fast_dev_run:
        cut = dataclasses.replace(
            data,
            train=data.train.subset(range(min(bs, len(data.train)))),
            valid=data.valid.subset(range(min(bs, len(data.valid)))),
            test=None,
        )
        # one batch of each: nothing to find a batch size or an LR from
        tc = dataclasses.replace(
            tc,
            epochs=1,
            checkpoint=False,
            lr=1e-3 if tc.lr == "auto" else tc.lr,
            batch_size=bs,
        )
        return cut, tc
    if tc.overfit_batches:
        fixed = data.train.subset(range(min(bs * tc.overfit_batches, len(data.train))))
        log(
            f"  overfit-batches: training and validating on the same {len(fixed)} images "
            f"({tc.overfit_batches} batches); expect accuracy near 1"
        )
        return dataclasses.replace(data, train=fixed, valid=fixed), tc
    return data, tc


def lr_find_run(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    tc: TrainConfig,
    log: Callable[[str], None] = lambda m: None,
    **kwargs: Any,
) -> Any:
    """``deepstart lr-find``: the LR finder on the model ``model_cfg`` names, from its
    pretrained weights if it has any; with ``tc.freeze`` or ``tc.fine_tune`` only the head
    trains (fine_tune's first phase, whose LR it then suggests). ``log`` gets the notices
    (what loaded, the normalisation the weights bring)."""
    seed_everything(tc.seed)
    data = load_data(data_cfg, tc.seed)
    model = build_model(model_cfg, data, tc.seed)
    if model_cfg.pretrained:
        apply_pretrained(model_cfg, model, data, log)
    learn = Learner(
        data,
        model,
        opt=tc.opt,
        wd=tc.wd,
        momentum=tc.momentum,
        batch_size=int(tc.batch_size),
        device=tc.device,
        precision=tc.precision,
        seed=tc.seed,
        log=log,
    )
    if tc.freeze or tc.fine_tune:
        learn.freeze()
    return lr_find(learn, **kwargs)
