"""Named training recipes, tuned for time-to-accuracy on a small CPU (docs/speed.md).

A recipe is a model with its options and the training settings that go with it (epochs,
peak LR, batch size, optimizer, schedule, augmentation, label smoothing, EMA, TTA). Each one
was chosen by measuring on a 2-core CPU (bench/recipes.py, bench/ablations.py) and carries
what it reached there, so ``deepstart recipes`` can say what to expect.

``deepstart train --data mnist`` with no ``--model`` trains the dataset's default recipe;
``--recipe NAME`` picks one by name; any flag given on the command line wins over the
recipe's value (``--epochs 2``, ``--model mnist_cnn``). Giving ``--model`` without
``--recipe`` trains that model with the plain defaults, as before recipes existed.

Example:
    >>> cfg = run_config(DataConfig("mnist"), recipe=get_recipe("mnist-fast"))
    >>> cfg.model.name, cfg.train.epochs, cfg.train.recipe
    ('fast_mnist', 4, 'mnist-fast')
    >>> train_run(cfg).test["accuracy"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.errors import ConfigError

# The model trained when there is neither a recipe nor --model (the pre-recipe default).
FALLBACK_MODEL = "vgg_small"


@dataclass(frozen=True)
class Measured:
    """What a recipe reached when it was measured (``python bench/recipes.py``).

    Attributes:
        accuracy: median test accuracy over the seeds, in [0, 1].
        seconds: median wall time from process start to the final test accuracy.
        date: when it was measured (YYYY-MM-DD).
        machine: where (and how busy it was).
    """

    accuracy: float
    seconds: float
    date: str
    machine: str = "2-core AMD EPYC (Zen 5), avx512_bf16, torch 2.13 CPU"


@dataclass(frozen=True)
class Recipe:
    """A named model + training settings.

    Attributes:
        name: what ``--recipe`` takes.
        dataset: the dataset it is tuned for (``deepstart data list`` names).
        description: one line on what it is for.
        model: registry name; ``model_options`` its options.
        train: :class:`~deepstart.config.TrainConfig` fields it sets (the rest keep their
            defaults).
        target: the accuracy it aims at, in [0, 1] (issue 7's targets).
        measured: what it reached on the reference machine (None: not measured yet).
        valid_pct: the share of train held out for validation (None: the data's default,
            0.1). 0 trains on every training image, as the speed runs do, and validates on
            the test split (so the per-epoch scores are not a clean test; the final test
            score is). ``deepstart train`` applies it unless ``--valid-pct`` is typed; in
            Python, pass it to :class:`~deepstart.config.DataConfig`.
        size, resize: the image size (one side, square) and resize policy the data is
            brought to (None: the data's own), unless ``--size`` / ``--resize`` are typed;
            in Python, pass them to :class:`~deepstart.config.DataConfig` as for valid_pct.
        pretrained: the weights the model starts from (a name of ``deepstart weights``).
    """

    name: str
    dataset: str
    description: str
    model: str
    model_options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    target: float | None = None
    measured: Measured | None = None
    valid_pct: float | None = None
    size: int | None = None
    resize: str | None = None
    pretrained: str | None = None

    def __post_init__(self) -> None:
        known = {f.name for f in TrainConfig.__dataclass_fields__.values()}
        unknown = set(self.train) - known
        if unknown:
            raise ConfigError(f"recipe {self.name}: unknown training settings {sorted(unknown)}")

    def summary(self) -> str:
        """One line: model and the settings that matter, for the run's log.

        Example:
            >>> get_recipe("mnist-fast").summary()
            'fast_mnist, 3 epochs, adamw lr 0.004 one_cycle, batch 256, ...'
        """
        t = {**_TRAIN_DEFAULTS, **self.train}
        if t.get("fine_tune"):
            epochs = f"{t['freeze_epochs']} epoch(s) frozen + {t['epochs']} unfrozen"
        else:
            epochs = f"{t['epochs']} epochs"
        parts = [
            self.model + (f" ({self.pretrained} weights)" if self.pretrained else ""),
            epochs,
            f"{t['opt']}{' nesterov' if t['opt'] == 'sgd' and t['nesterov'] else ''} "
            f"lr {t['lr']:g} {t['schedule']}",
            f"batch {t['batch_size']}",
        ]
        if t.get("norm_bias_lr", 1.0) != 1.0:
            parts.append(f"BN shifts at {t['norm_bias_lr']:g}x lr")
        if t.get("augment"):
            parts.append(f"augment {t['augment']}")
        if t.get("label_smoothing"):
            parts.append(f"label smoothing {t['label_smoothing']:g}")
        if t.get("ema"):
            parts.append(f"EMA {t['ema']:g}")
        if t.get("lookahead"):
            parts.append("lookahead")
        if t.get("keep_frozen"):
            parts.append(f"first {t['keep_frozen']} layer group(s) stay frozen")
        if t.get("keep_better"):
            parts.append("the unfrozen phase kept only if it helps")
        if t.get("precompute"):
            parts.append("cached features while frozen")
        if t.get("tta"):
            parts.append("TTA")
        if self.size:
            parts.append(f"{self.size}px {self.resize or 'squish'}")
        if self.valid_pct == 0:
            parts.append("all training images (no valid split)")
        elif self.valid_pct is not None:
            parts.append(f"valid {self.valid_pct:.0%} of train")
        parts.append(f"precision {t['precision']}")
        return ", ".join(parts)


_TRAIN_DEFAULTS = {f.name: f.default for f in TrainConfig.__dataclass_fields__.values()}

# Measured with `python bench/recipes.py` (docs/benchmarks.md, "Speed recipes"): median test
# accuracy over the seeds (a seed's accuracy repeats exactly), and the time of a run on the
# quietest machine we had (other developers' jobs share the 2 cores; see the load).
MACHINE = "2-core AMD EPYC (Zen 5), avx512_bf16, torch 2.13 CPU"
# The slower VM of a later session: AVX-512 in 256-bit halves, half the bf16 matmul rate.
ZEN4 = "2-core AMD EPYC (Zen 4), avx512_bf16, torch 2.13 CPU"
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "shapes-fast",
            "shapes",
            "the generated shapes (3 classes, 32x32 grey) in a few seconds",
            "fast_mnist",
            {"widths": [16, 32, 64, 64]},
            {
                "epochs": 4,
                "lr": 5e-3,
                "batch_size": 128,
                "label_smoothing": 0.1,
                "augment": "flip",
            },
            target=0.999,
            # 5.4 s on Zen 5 (2026-11-23).
            measured=Measured(1.0, 9.0, "2026-11-24", ZEN4 + ", 3 seeds, quiet"),
        ),
        Recipe(
            "mnist-fast",
            "mnist",
            "MNIST to ~99.4% in under a minute",
            "fast_mnist",
            {},
            # 3 epochs and a weight average: 99.42% median where 3 epochs without it gave
            # 99.38% and 4 epochs 99.41% (in 40 s on Zen 5, 65 s on Zen 4). Over 633 steps
            # the EMA's warm-up ramp, (1 + t) / (10 + t) < 0.99, sets how far it averages.
            {"epochs": 3, "lr": 4e-3, "batch_size": 256, "label_smoothing": 0.1, "ema": 0.99},
            target=0.994,
            # 57.4 s on the same VM the day before (55-60 s).
            measured=Measured(0.9942, 53.0, "2026-11-24", ZEN4 + ", 3 seeds, quiet"),
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
            measured=Measured(0.9959, 99.4, "2026-11-23", MACHINE + ", 3 seeds, quiet"),
        ),
        Recipe(
            "fashion-fast",
            "fashion_mnist",
            "Fashion-MNIST to ~93% in under 3 minutes",
            "fast_mnist",
            {},
            {
                "epochs": 8,
                "lr": 4e-3,
                "batch_size": 256,
                "label_smoothing": 0.1,
                "augment": "flip",
                "tta": True,
            },
            target=0.93,
            # Fixed mirror views for TTA since the night of 2026-11-23 (93.10% in 80 s on Zen 5
            # with random flips).
            measured=Measured(0.9308, 139.1, "2026-11-23", ZEN4 + ", 3 seeds, quiet"),
        ),
        Recipe(
            "cifar10-fast",
            "cifar10",
            "CIFAR-10 to ~80% in 3 minutes (the notes' 100-epoch Keras result)",
            "fast_cifar",
            {"widths": [32, 32, 64, 128], "extra": 0},
            {
                "epochs": 7,
                "lr": 4e-3,
                "batch_size": 256,
                "label_smoothing": 0.2,
                "augment": "cifar",
                "tta": True,
            },
            target=0.80,
            # 7 epochs since Zen 4: seeds 0-2 80.76%, 80.27%, 80.73% in 162, 160, 156 s. The
            # 10 epochs before: 82.26% in 209 s there (125 s on Zen 5).
            measured=Measured(0.8073, 160.0, "2026-11-24", ZEN4 + ", 3 seeds, quiet"),
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
            # needed 16 epochs.)
            {
                "epochs": 9,
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
            # Seeds 0-2: 90.47%, 90.37%, 90.53% in 1,169, 1,116, 1,231 s (the VM drifted:
            # epochs of 108-136 s). The AdamW recipe before it: 16 epochs, ~33 min here.
            measured=Measured(0.9047, 1169.0, "2026-11-24", ZEN4 + ", 3 seeds, quiet"),
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


# A folder whose images' median short side reaches this is photos (STL-10's 96 px and up):
# ImageNet features fit them. Below it (CIFAR's 32 px, MNIST's 28) from-scratch recipes win.
PHOTO_MIN_SIDE = 64


def default_recipe(data: str, data_dir: str | None = None) -> Recipe | None:
    """The default recipe for a dataset, or None when it has none (see :func:`recipe_for`).

    Example:
        >>> default_recipe("mnist").name
        'mnist-fast'
    """
    return recipe_for(data, data_dir)[0]


def recipe_for(data: str, data_dir: str | None = None) -> tuple[Recipe | None, str]:
    """The default recipe for a dataset and why: a named dataset's own; for a folder (or a
    folder path), a look at its images decides: photos get ``photos`` (a pretrained
    backbone), small colour pictures ``cifar10-fast``, small grey ones none.

    Example:
        >>> recipe_for("folder", "pets")
        (Recipe(name='photos', ...), 'the images are photos (median 375x500 px, ...)')
    """
    if data in DEFAULTS:
        return RECIPES[DEFAULTS[data]], f"the default recipe of {data}"
    path = data_dir if data == "folder" else data
    if not path or not Path(path).expanduser().exists():
        return None, "no recipe for this dataset"
    from deepstart.data.folder import peek_folder

    peek = peek_folder(path)
    h, w = peek.size
    seen = f"median {h}x{w} px over {peek.sampled} of {peek.n_images} training images"
    if min(h, w) >= PHOTO_MIN_SIDE:
        return RECIPES["photos"], (
            f"the images are photos ({seen}): fine-tuning ImageNet-pretrained weights beats "
            f"training from scratch on them"
        )
    if peek.colour >= 0.5:
        return RECIPES[DEFAULTS["cifar10"]], (
            f"small colour pictures ({seen}), like CIFAR-10: trained from scratch"
        )
    return None, f"small grey pictures ({seen}): the plain defaults ({FALLBACK_MODEL})"


def choose_recipe(
    name: str | None, data: str, data_dir: str | None = None, *, model: str | None = None
) -> Recipe | None:
    """The recipe a ``deepstart train`` command line asks for: ``--recipe NAME`` if given;
    else none when ``--model`` is given; else the dataset's default (maybe none).

    Example:
        >>> choose_recipe(None, "mnist").name
        'mnist-fast'
        >>> choose_recipe(None, "mnist", model="mnist_cnn") is None
        True
    """
    return choose_recipe_why(name, data, data_dir, model=model)[0]


def choose_recipe_why(
    name: str | None, data: str, data_dir: str | None = None, *, model: str | None = None
) -> tuple[Recipe | None, str]:
    """:func:`choose_recipe` and the reason, for the run's log."""
    if name is not None:
        return get_recipe(name), "asked for by --recipe"
    if model is not None:
        return None, "--model given"
    return recipe_for(data, data_dir)


def run_config(
    data: DataConfig,
    *,
    recipe: Recipe | None = None,
    model: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    pretrained_sha256: str | None = None,
    train: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The run's config: the recipe's values, with every value given here winning.

    ``model`` replaces the recipe's model (and drops the recipe's model options, which
    belong to its model); ``model_options`` are merged over the recipe's when the model is
    the recipe's. ``train`` holds the TrainConfig fields given explicitly. Without a recipe
    and a model, the model is ``vgg_small``.

    Example:
        >>> cfg = run_config(DataConfig("mnist"), recipe=get_recipe("mnist-fast"),
        ...                  train={"epochs": 2})
        >>> cfg.train.epochs, cfg.train.lr
        (2, 0.004)
    """
    given = dict(train or {})
    options = dict(model_options or {})
    if recipe is None:
        name = model or FALLBACK_MODEL
        settings = given
    else:
        if model is None or model == recipe.model:
            name, options = recipe.model, {**recipe.model_options, **options}
        else:
            name = model
        settings = {**recipe.train, **given, "recipe": recipe.name}
    if recipe is not None and recipe.pretrained and pretrained is None and name == recipe.model:
        pretrained = recipe.pretrained
    return RunConfig(
        data=data,
        model=ModelConfig(
            name, options, pretrained=pretrained, pretrained_sha256=pretrained_sha256
        ),
        train=TrainConfig(**settings),
    )


def recipe_rows() -> list[dict[str, Any]]:
    """The table ``deepstart recipes`` prints, as dicts (name, dataset, default, model,
    epochs, target, accuracy, seconds, date, machine, description, summary)."""
    defaults = {v: k for k, v in DEFAULTS.items()}
    rows = []
    for r in list_recipes():
        t = {**_TRAIN_DEFAULTS, **r.train}
        m = r.measured
        rows.append(
            {
                "name": r.name,
                "dataset": r.dataset,
                "default": r.name in defaults,
                "model": r.model,
                "epochs": t["epochs"],
                "target": r.target,
                "accuracy": m.accuracy if m else None,
                "seconds": m.seconds if m else None,
                "date": m.date if m else None,
                "machine": m.machine if m else None,
                "description": r.description,
                "summary": r.summary(),
            }
        )
    return rows
