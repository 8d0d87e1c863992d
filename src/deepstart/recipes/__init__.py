"""Named training recipes, tuned for time-to-accuracy on a small CPU (docs/speed.md).

A recipe is a model with its options and the training settings that go with it (epochs,
peak LR, batch size, optimizer, schedule, augmentation, label smoothing, EMA, TTA). Each one
was chosen by measuring on a 2-core CPU (bench/recipes.py, bench/ablations.py); what it
reached, on every seed and CPU type measured, ships in results.jsonl, so ``deepstart
recipes`` can say what to expect.

``deepstart train --data mnist`` with no ``--model`` trains the dataset's default recipe;
``--recipe NAME`` picks one by name; any flag given on the command line wins over the
recipe's value (``--epochs 2``, ``--model mnist_cnn``). Giving ``--model`` without
``--recipe`` trains that model with its own settings (``training_defaults``), then the plain
defaults.

Example:
    >>> cfg = run_config(DataConfig("mnist"), recipe=get_recipe("mnist-fast"))
    >>> cfg.model.name, cfg.train.epochs, cfg.train.recipe
    ('fast_mnist', 3, 'mnist-fast')
    >>> train_run(cfg).test["accuracy"]

- :mod:`~deepstart.recipes.recipe`: what a recipe is (:class:`Recipe`);
- :mod:`~deepstart.recipes.table`: the recipes, each dataset's default, the table, and
  :func:`measured`, what a recipe is quoted as reaching (from
  :mod:`~deepstart.recipes.results`, every seed on every CPU type);
- :mod:`~deepstart.recipes.choose`: which recipe a command line or folder gets, and
  :func:`run_config`, which makes the run's config from it and the values given.
"""

from deepstart.recipes.choose import (
    FALLBACK_MODEL,
    PHOTO_MIN_SIDE,
    choose_recipe,
    choose_recipe_why,
    default_recipe,
    recipe_for,
    run_config,
)
from deepstart.recipes.recipe import TRAIN_DEFAULTS, Recipe
from deepstart.recipes.table import (
    DEFAULTS,
    RECIPES,
    get_recipe,
    list_recipes,
    measured,
    recipe_rows,
)

__all__ = [
    "DEFAULTS",
    "FALLBACK_MODEL",
    "PHOTO_MIN_SIDE",
    "RECIPES",
    "TRAIN_DEFAULTS",
    "Recipe",
    "choose_recipe",
    "choose_recipe_why",
    "default_recipe",
    "get_recipe",
    "list_recipes",
    "measured",
    "recipe_for",
    "recipe_rows",
    "run_config",
]
