"""What a recipe is: a model and the training settings that go with it (what it reached, run
by run on each CPU, is in :mod:`deepstart.recipes.results`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deepstart.config import TrainConfig
from deepstart.errors import ConfigError

# Every TrainConfig field and its default, for the settings a recipe does not name.
TRAIN_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


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
        target: the accuracy it aims at, in [0, 1], on every seed (issue 7's targets).
        target_seconds: the wall time it aims at, from process start to the last test
            accuracy, on every CPU type (None: no time target).
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
    target_seconds: float | None = None
    valid_pct: float | None = None
    size: int | None = None
    resize: str | None = None
    pretrained: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.train) - set(TRAIN_DEFAULTS)
        if unknown:
            raise ConfigError(f"recipe {self.name}: unknown training settings {sorted(unknown)}")

    def fingerprint(self) -> str:
        """12 hex digits naming what the recipe trains (model, options, data and training
        settings, weights; not its name, description or results): a run recorded under
        another fingerprint ran an older version of the recipe.

        Example:
            >>> len(get_recipe("mnist-fast").fingerprint())
            12
        """
        what = {
            "dataset": self.dataset, "model": self.model,
            "model_options": dict(self.model_options), "train": dict(self.train),
            "valid_pct": self.valid_pct, "size": self.size, "resize": self.resize,
            "pretrained": self.pretrained,
        }  # fmt: skip
        text = json.dumps(what, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def summary(self) -> str:
        """One line: model and the settings that matter, for the run's log.

        Example:
            >>> get_recipe("mnist-fast").summary()
            'fast_mnist (space_to_depth 2, widths 24-48-96-192), 3 epochs, adamw lr 0.006 ...'
        """
        t = {**TRAIN_DEFAULTS, **self.train}
        if t.get("fine_tune"):
            epochs = f"{t['freeze_epochs']} epoch(s) frozen + {t['epochs']} unfrozen"
        else:
            epochs = f"{t['epochs']} epochs"
        if t.get("small_epochs"):  # progressive resizing
            epochs += f" (the first {t['small_epochs']} at {t['small_scale']:g} of the side)"
        model = self.model + (f" ({self.pretrained} weights)" if self.pretrained else "")
        if self.model_options:  # the net differs from --model NAME's: say how
            model += f" ({', '.join(f'{k} {_value(v)}' for k, v in self.model_options.items())})"
        parts = [
            model,
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


def _value(v: object) -> str:
    """A model option as the recipe line shows it: widths 24-48-96-192, 1/9 as 0.111."""
    if isinstance(v, list | tuple):
        return "-".join(_value(x) for x in v)
    return f"{v:.3g}" if isinstance(v, float) else str(v)
