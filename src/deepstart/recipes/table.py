"""The measured recipes (:data:`RECIPES`), each dataset's default, and the ``deepstart
recipes`` table."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from deepstart.errors import ConfigError
from deepstart.recipes.recipe import TRAIN_DEFAULTS, Recipe
from deepstart.recipes.results import (
    RESULTS,
    Summary,
    on_target,
    quoted,
    read_runs,
    summarise,
)

# What each recipe reached is measured with `python bench/recipes.py --record` and kept run by
# run in results.jsonl (every seed, every CPU type); `deepstart recipes` quotes the slowest
# CPU type's figures (results.quoted). The comments below keep the history behind each choice.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "shapes-fast",
            "shapes",
            "the generated shapes (3 classes, 32x32 grey) in a few seconds",
            "fast_mnist",
            {"widths": [16, 32, 64, 64]},
            # 5 epochs: with 4, one small faint circle of the 600 test shapes was wrong on
            # 4 of 18 runs on Intel with AMX (seeds 0-9 bf16, 0-7 fp32), with 5 on none.
            # Drawing the shapes got 0.8 s faster the same day, so the run takes what the
            # 4-epoch one did.
            {
                "epochs": 5,
                "lr": 5e-3,
                "batch_size": 128,
                "label_smoothing": 0.1,
                "augment": "flip",
            },
            target=0.999,
            target_seconds=10,
            # 5.4 s on Zen 5 (2026-11-23, 4 epochs); 4-5 s on the Intel Xeon (5 seeds).
        ),
        Recipe(
            "mnist-fast",
            "mnist",
            "MNIST to ~99.4% in under a minute",
            "fast_mnist",
            # Each 2x2 patch of a digit folded into 4 channels (14x14x4), then 24-48-96-192:
            # no layer runs at 28x28, where BatchNorm, ReLU and max-pool (and their
            # gradients) cost as much as the convs. Steps 2x faster than 16-32-64-128, with
            # the same accuracy on Zen 4 (docs/benchmarks.md, session 25).
            {"space_to_depth": 2, "widths": [24, 48, 96, 192]},
            # 3 epochs and a weight average: 99.42% median where 3 epochs without it gave
            # 99.38% and 4 epochs 99.41% (in 40 s on Zen 5, 65 s on Zen 4). Batch 128 at lr
            # 6e-3 (was 256 at 4e-3): twice the steps for ~10% more time lifted the lowest
            # of 5 seeds on the Intel Xeon from 99.30% to 99.45% (docs/benchmarks.md). Over
            # 1,266 steps the EMA's warm-up ramp, (1 + t) / (10 + t) < 0.99, matters little.
            {"epochs": 3, "lr": 6e-3, "batch_size": 128, "label_smoothing": 0.1, "ema": 0.99},
            target=0.994,
            target_seconds=60,
            # 1,200 digits to watch the fit, 58,800 to learn from (10% held out: 54,000):
            # lowest of 5 seeds 99.46% against 99.43%, in bf16 and in fp32 alike (Zen 4).
            valid_pct=0.02,
            # Unfolded (16-32-64-128 at 28x28): 99.47% in 34 s on the Intel Xeon (2026-12-06),
            # 49-60 s on Zen 4, short of the 20% to spare (48 s). Folded, on Zen 4:
            # 99.43-99.55% in 34-39 s (bf16), 99.43-99.51% in 47-52 s (fp32, 74-82 s before);
            # with valid_pct 0.02, 99.46-99.53% in 30-38 s and 99.46-99.51% in 40-46 s.
        ),
        Recipe(
            "mnist-995",
            "mnist",
            "MNIST to ~99.5%: small shifts, turns and zooms of the digits, more epochs",
            "fast_mnist",
            {},
            {
                "epochs": 10,
                "lr": 4e-3,
                "batch_size": 256,
                "label_smoothing": 0.1,
                "augment": "digits",
            },
            target=0.995,
            target_seconds=240,
            # 99.59% in 99 s on Zen 5 (2026-11-23, 3 seeds); 99.65% in 96 s on the Intel Xeon
            # (2026-12-06, 5 seeds).
        ),
        Recipe(
            "fashion-fast",
            "fashion_mnist",
            "Fashion-MNIST to ~93% in under 3 minutes",
            "fast_mnist",
            {},
            {
                "epochs": 8,
                # 4e-3 left 2 of 5 seeds under 93% on the Intel Xeon (92.92-93.46%); 8e-3
                # and 1.2e-2 each lifted those two by 0.3-0.4 points (docs/benchmarks.md).
                "lr": 1e-2,
                "batch_size": 256,
                "label_smoothing": 0.1,
                "augment": "flip",
                "tta": True,
            },
            target=0.93,
            target_seconds=180,
            # 93.53% in 85 s on the Intel Xeon (2026-12-06, 5 seeds); 93.10% in 80 s on Zen 5
            # at lr 4e-3 with random-flip TTA.
        ),
        Recipe(
            "cifar10-fast",
            "cifar10",
            "CIFAR-10 to ~80% in 3 minutes (the notes' 100-epoch Keras result)",
            "fast_cifar",
            {"widths": [32, 32, 64, 128], "extra": 0},
            {
                "epochs": 8,
                "small_epochs": 5,
                "lr": 4e-3,
                "batch_size": 256,
                "label_smoothing": 0.2,
                "augment": "cifar",
                "tta": True,
            },
            target=0.80,
            target_seconds=180,
            # 7 epochs since Zen 4 (10 took 209 s there, 125 s on Zen 5): 138-168 s there, the
            # VM's speed drifting by up to 20% within an hour. Then 8 epochs, the first 5 at
            # 24x24 (progressive resizing, 0.56-0.69x the time an epoch): the same accuracy
            # (lowest of 5 seeds 80.48% against 80.37%) in 0.63-0.95x the time of the run
            # beside it on Zen 4 (docs/benchmarks.md, "Progressive resizing").
        ),
        Recipe(
            "cifar10-90",
            "cifar10",
            "CIFAR-10 to ~90% in 20 minutes: airbench's net and optimiser, 98% of the images",
            "fast_cifar",
            # airbench94's net: whitening, 64-256-256 with two convs a block, identity-started
            # convs, BatchNorm without a scale and with fast statistics, logits / 9.
            {
                "widths": [32, 64, 256, 256],
                "dirac": True,
                "bn_scale": False,
                "bn_momentum": 0.4,
                "logit_scale": 1 / 9,
            },
            # airbench94's optimiser in PyTorch's units for a mean loss over 1024 images: its
            # lr 11.5 / (1 + 1/(1 - 0.85)) = 1.5; its decay per step, 0.0153 * 1024 / 7851 =
            # 2.0e-3, is lr * wd with wd = 1.33e-3 (L2); BatchNorm shifts 64x faster;
            # triangular schedule, lookahead, flips alternating by epoch. (AdamW at 4e-3
            # needed 16 epochs.) 11 epochs since 2026-12-07, the first 5 at 24x24: each of
            # those costs ~0.54x a full one, so 11 cost ~8.7 full ones, about what 9 did;
            # the two extra epochs bought accuracy, not time.
            {
                "epochs": 11,
                "small_epochs": 5,
                "opt": "sgd",
                "lr": 1.5,
                "momentum": 0.85,
                "nesterov": True,
                "wd": 1.33e-3,
                "norm_bias_lr": 64.0,
                "schedule": "triangle",
                "pct_start": 0.23,
                "batch_size": 1024,
                "label_smoothing": 0.2,
                "lookahead": True,
                "augment": "cifar-alt",
                "tta": True,
            },
            target=0.90,
            target_seconds=1200,
            # Seeds 0-2: 90.47%, 90.37%, 90.53% in 1,169, 1,116, 1,231 s (the VM drifted:
            # epochs of 108-136 s). The AdamW recipe before it: 16 epochs, ~33 min here.
            # Seeds 0-4 on 2026-12-07: 90.11-90.53% in 969-1,119 s (seeds 0 and 2 as before;
            # epochs of 104-129 s as the VM drifted), 7% of the 20 minutes to spare. 11
            # epochs, the first 5 small (session 28, Zen 4): 90.61-90.82% in 823-833 s (small
            # epochs ~49 s, full ones ~90 s), 31% to spare.
            # 1,000 images to watch the fit: scoring them after each epoch took 0.4 s on
            # Zen 5, where the 10,000 test images (valid_pct 0) took ~4 s.
            valid_pct=0.02,
        ),
        Recipe(
            "photos",
            "folder",
            "your photos: fine-tune an ImageNet-pretrained EfficientNet-Lite0 (works offline)",
            "efficientnet_lite0",
            {},
            # fastai's lesson 1 on a CPU: the head first, on features computed once (the
            # frozen body sees each image once), then the later half of the body and the
            # head for one epoch with lower LRs for earlier layers, kept only if it lowered
            # the validation loss; flip TTA at the end. (bench/photos.py, docs/benchmarks.md)
            {
                "fine_tune": True,
                "freeze_epochs": 12,  # 0.15 s each on cached features
                "epochs": 1,
                "keep_frozen": 1,  # the early, high-resolution blocks: half the cost
                "keep_better": True,
                "lr": 2e-3,
                "batch_size": 64,
                "precompute": True,
                "tta": True,
            },
            # issue 18: a two-class folder of ~3,000 photos in 3 minutes on 2 cores
            target=0.98,
            target_seconds=180,
            size=224,
            resize="crop",
            pretrained="imagenet",
        ),
    ]
}

# The recipe `deepstart train --data NAME` uses when no --model or --recipe is given.
DEFAULTS: dict[str, str] = {
    "shapes": "shapes-fast",
    "mnist": "mnist-fast",
    "fashion_mnist": "fashion-fast",
    "cifar10": "cifar10-fast",
}


def list_recipes() -> list[Recipe]:
    """Every recipe, in the order of :data:`RECIPES`.

    Example:
        >>> [r.name for r in list_recipes()][:2]
        ['shapes-fast', 'mnist-fast']
    """
    return list(RECIPES.values())


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a ConfigError lists the known names."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)} (deepstart recipes)"
        ) from None


def measured(recipe: Recipe | str) -> Summary | None:
    """What ``recipe`` is quoted as reaching: its current version's runs in results.jsonl, in
    the default precision, on the slowest CPU type measured (:func:`results.quoted`), or None
    when it has none.

    Example:
        >>> s = measured("mnist-995")
        >>> s.cpu, s.seeds, f"{s.median:.2%}"
        ('AMD EPYC (Zen 4)', 5, '99.61%')
    """
    r = get_recipe(recipe) if isinstance(recipe, str) else recipe
    return quoted(summarise(read_runs(RESULTS), r.name, r.fingerprint()))


def recipe_rows() -> list[dict[str, Any]]:
    """The table ``deepstart recipes`` prints, as dicts (name, dataset, default, model,
    epochs, target, target_seconds; accuracy (the median), seconds (the median), date,
    machine, cpu, seeds: what :func:`measured` quotes, None when never measured;
    description, summary, results: one dict per CPU, core count and precision measured, a
    :class:`results.Summary` with its ``machine``, ``on_target`` and ``spare``: the share of
    the time target the slowest seed left unused, negative when over it, None without a time
    target)."""
    defaults = {v: k for k, v in DEFAULTS.items()}
    runs = read_runs(RESULTS)
    rows = []
    for r in list_recipes():
        t = {**TRAIN_DEFAULTS, **r.train}
        summaries = summarise(runs, r.name, r.fingerprint())
        m = quoted(summaries)  # what measured(r) quotes, from the summaries shown below
        rows.append(
            {
                "name": r.name,
                "dataset": r.dataset,
                "default": r.name in defaults,
                "model": r.model,
                "epochs": t["epochs"],
                "target": r.target,
                "target_seconds": r.target_seconds,
                "accuracy": m.median if m else None,
                "seconds": m.median_seconds if m else None,
                "date": m.date if m else None,
                "machine": f"{m.machine}, {m.seeds} seed{'s' * (m.seeds != 1)}" if m else None,
                "cpu": m.cpu if m else None,
                "seeds": m.seeds if m else None,
                "description": r.description,
                "summary": r.summary(),
                "results": [
                    {
                        **asdict(x),
                        "machine": x.machine,
                        "on_target": on_target(x, r.target, r.target_seconds),
                        "spare": 1 - x.slowest_seconds / r.target_seconds
                        if r.target_seconds
                        else None,
                    }
                    for x in summaries
                ],
            }
        )
    return rows
