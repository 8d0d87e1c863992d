"""Which recipe a command line or a folder gets, and the run config it makes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.recipes.recipe import Recipe
from deepstart.recipes.table import DEFAULTS, RECIPES, get_recipe, measured
from deepstart.train.estimate import duration_text

# The model trained when there is neither a recipe nor --model (the pre-recipe default).
FALLBACK_MODEL = "vgg_small"

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
    return None, f"small grey pictures ({seen}): {FALLBACK_MODEL} with its own settings"


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
    the recipe's. ``train`` holds the TrainConfig fields given explicitly. Without a recipe,
    the model (``vgg_small`` when none is named) trains with its own training defaults
    (:func:`~deepstart.models.registry.training_defaults`) under the given fields.

    Example:
        >>> cfg = run_config(DataConfig("mnist"), recipe=get_recipe("mnist-fast"),
        ...                  train={"epochs": 2})
        >>> cfg.train.epochs, cfg.train.lr
        (2, 0.006)
    """
    given = dict(train or {})
    options = dict(model_options or {})
    if recipe is None:
        from deepstart.models.registry import training_defaults  # imports torch

        name = model or FALLBACK_MODEL
        settings = {**training_defaults(name), **given}
    else:
        if model is None or model == recipe.model:
            name, options = recipe.model, {**recipe.model_options, **options}
        else:
            name = model
        settings = {**recipe.train, **given, "recipe": recipe.name}
        settings["small_epochs"] = small_epochs_for(recipe, given)
    if recipe is not None and recipe.pretrained and pretrained is None and name == recipe.model:
        pretrained = recipe.pretrained
    return RunConfig(
        data=data,
        model=ModelConfig(
            name, options, pretrained=pretrained, pretrained_sha256=pretrained_sha256
        ),
        train=TrainConfig(**settings),
    )


def small_epochs_for(recipe: Recipe, given: Mapping[str, Any]) -> int | None:
    """The ``small_epochs`` a run of ``recipe`` trains with: as typed, else the recipe's, kept
    to the same share of the run when ``--epochs`` is typed (floored; at least the last
    epoch stays full size). A short trial of a recipe then still ends at the full size.

    Example:
        >>> recipe = get_recipe("cifar10-fast")  # 8 epochs, the first 5 small
        >>> small_epochs_for(recipe, {"epochs": 2}), small_epochs_for(recipe, {"epochs": 16})
        (1, 10)
    """
    if "small_epochs" in given:
        return given["small_epochs"]
    small = recipe.train.get("small_epochs")
    if not small or "epochs" not in given:
        return small
    epochs = int(given["epochs"])
    return max(0, min(small * epochs // int(recipe.train["epochs"]), epochs - 1))


def usual_lr(model: str | None, recipe: str | None) -> tuple[float, str]:
    """The LR a run of ``model`` (under ``recipe``, if any) trains with when ``--lr`` is not
    typed, and whose it is: what ``--lr auto`` is measured against and may keep.

    The layering is :func:`run_config`'s: a recipe's LR, else the model's own when it runs
    without a recipe, else TrainConfig's default.

    Example:
        >>> usual_lr("mnist_cnn", None)
        (0.002, "mnist_cnn's own")
        >>> usual_lr("mnist_cnn", "mnist-fast")
        (0.006, "recipe mnist-fast's")
    """
    if recipe is not None:
        lr, whose = get_recipe(recipe).train.get("lr"), f"recipe {recipe}'s"
    else:  # run_config's model: the named one, else the fallback
        from deepstart.models.registry import training_defaults  # imports torch

        model = model or FALLBACK_MODEL
        lr, whose = training_defaults(model).get("lr"), f"{model}'s own"
    return (float(TrainConfig().lr), "the default") if lr is None else (float(lr), whose)


def faster_recipe(data: str, current: str | None, seconds: float) -> str | None:
    """A phrase naming a recipe of ``data`` that reached, when measured, at least the accuracy
    of the ``current`` recipe (any accuracy when the run is on none) in under half of
    ``seconds`` (the run's estimated time), or None. Of several, the most accurate. The
    figures are what :func:`~deepstart.recipes.table.measured` quotes: the slowest CPU's.

    Example:
        >>> faster_recipe("mnist", None, 600)
        'recipe mnist-995 reached 99.61% test accuracy (median of its seeds) in about 2 min 44 s...'
    """
    quoted = {r.name: measured(r) for r in RECIPES.values() if r.dataset == data}
    now = quoted.get(current) if current else None
    floor = now.median if now is not None else 0.0
    found = {
        name: m
        for name, m in quoted.items()
        if m is not None and name != current and m.median >= floor
        if 2 * m.median_seconds <= seconds
    }
    if not found:
        return None
    best = max(found, key=lambda name: (found[name].median, -found[name].median_seconds))
    m = found[best]
    return (
        # Two decimals: one would round 99.65% up to 99.7%, which no seed reached.
        f"recipe {best} reached {m.median:.2%} test accuracy (median of its seeds) in about "
        f"{duration_text(m.median_seconds)} when measured on {m.machine} (--recipe {best})"
    )
