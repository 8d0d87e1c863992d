"""What a trained classifier gets right and wrong, as tables: the numbers behind every plot.

:class:`Interpretation` holds one split's images, labels and predicted probabilities and answers
the questions fastai's lesson 1 asks of a model: which classes are confused, which pictures
cost the most loss, which it is surest and least sure about. It computes; ``plots`` draws
(``interp.plot_confusion_matrix()``, ``plot_top_losses(k)``, ``plot_most_uncertain(k)`` return
figures a notebook shows inline; the interpretation itself shows as a table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from deepstart.data.dataset import ImageSet, conform_images

if TYPE_CHECKING:
    from deepstart.figures import InlineFigure
    from deepstart.interpret.suspects import Suspects
    from deepstart.train.learner import Learner


@dataclass
class Interpretation:
    """Predictions on one split, and the tables made from them.

    Attributes:
        images: the split as the model saw it (after the model's resize and channel policy).
        probs: ``(N, K)`` float32 class probabilities, on the CPU.
        split: which split it is ("test", "valid", "train" or "custom").

    Example:
        >>> interp = Interpretation.from_learner(learn)
        >>> interp.most_confused()[:3]
        [('4', '9', 12), ('7', '2', 9), ('3', '5', 8)]
        >>> interp.plot_top_losses(9)  # in a notebook: the pictures, inline
    """

    images: ImageSet
    probs: torch.Tensor
    split: str = "test"

    def __post_init__(self) -> None:
        self.probs = self.probs.detach().float().cpu()
        n, k = len(self.images), len(self.images.classes)
        if tuple(self.probs.shape) != (n, k):
            raise ValueError(f"probs are {tuple(self.probs.shape)}, expected ({n}, {k})")

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_learner(cls, learn: Learner, split: str | ImageSet = "test") -> Interpretation:
        """Predict ``split`` with the learner's model, through its own preprocessing."""
        images = conform_images(learn._split(split), learn.preprocess)
        name = split if isinstance(split, str) else "custom"
        if name == "test" and learn.data.test is None:
            name = "valid"  # the learner falls back to valid; say which split this really is
        return cls(images, learn.get_preds(images)[0], name)

    # -- per item ---------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.images.classes)

    @property
    def targets(self) -> torch.Tensor:
        """``(N,)`` int64 true labels."""
        return self.images.labels.long()

    @property
    def preds(self) -> torch.Tensor:
        """``(N,)`` int64 predicted labels (the most probable class)."""
        return self.probs.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        """``(N,)`` probability of the predicted class."""
        return self.probs.max(dim=1).values

    @property
    def losses(self) -> torch.Tensor:
        """``(N,)`` cross-entropy of each item in nats: ``-log p(true class)``.

        Probabilities are clamped at the smallest float32, so a certain mistake costs about
        87 nats rather than infinity.
        """
        p_true = self.probs.gather(1, self.targets[:, None])[:, 0]
        # clamp_min(0): a rounded p of 1.0 would otherwise give -0.0 (shown as "-0.00")
        return (-p_true.clamp_min(torch.finfo(torch.float32).tiny).log()).clamp_min(0.0)

    @property
    def correct(self) -> torch.Tensor:
        return self.preds == self.targets

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean()) if len(self.targets) else math.nan

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats."""
        return float(self.losses.double().mean()) if len(self.targets) else math.nan

    # -- tables -----------------------------------------------------------------------------
    def confusion_matrix(self, normalise: bool = False) -> torch.Tensor:
        """``(K, K)`` counts: row = true class, column = predicted class.

        With ``normalise`` each row is divided by its total, so the diagonal is each class's
        recall (a class with no items gives a row of zeros).
        """
        k = len(self.classes)
        flat = self.targets * k + self.preds
        cm = torch.bincount(flat, minlength=k * k).view(k, k)
        if not normalise:
            return cm
        rows = cm.sum(dim=1, keepdim=True).double()
        return torch.where(rows > 0, cm.double() / rows.clamp_min(1), torch.zeros_like(rows))

    def per_class(self) -> list[dict[str, Any]]:
        """Precision, recall and F1 of each class, with its support (true count) and the
        number of items predicted as it. Undefined ratios (nothing predicted, no items) are NaN.
        """
        cm = self.confusion_matrix().double()
        tp = cm.diag()
        support, predicted = cm.sum(dim=1), cm.sum(dim=0)
        rows = []
        for c, name in enumerate(self.classes):
            precision = float(tp[c] / predicted[c]) if predicted[c] > 0 else math.nan
            recall = float(tp[c] / support[c]) if support[c] > 0 else math.nan
            if math.isnan(precision) or math.isnan(recall):
                f1 = math.nan
            else:
                f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append(
                {
                    "class": name,
                    "support": int(support[c]),
                    "predicted": int(predicted[c]),
                    "precision": precision,
                    "recall": recall,
                    "f1": f1,
                }
            )
        return rows

    def macro_average(self) -> dict[str, float]:
        """Unweighted mean of precision, recall and F1 over the classes that define them."""
        rows = self.per_class()
        out = {}
        for key in ("precision", "recall", "f1"):
            vals = [r[key] for r in rows if not math.isnan(r[key])]
            out[key] = sum(vals) / len(vals) if vals else math.nan
        return out

    def most_confused(self, min_count: int = 1, k: int | None = None) -> list[tuple[str, str, int]]:
        """Off-diagonal (true, predicted, count) cells, most frequent first."""
        cm = self.confusion_matrix()
        names = self.classes
        pairs = [
            (names[t], names[p], int(cm[t, p]))
            for t in range(len(names))
            for p in range(len(names))
            if t != p and int(cm[t, p]) >= min_count
        ]
        pairs.sort(key=lambda x: -x[2])  # stable: equal counts keep class order
        return pairs[:k] if k is not None else pairs

    def top_losses(self, k: int | None = None) -> torch.Tensor:
        """Indices of the items with the highest loss, highest first."""
        order = torch.sort(self.losses, descending=True, stable=True).indices
        return order[:k] if k is not None else order

    def most_confident(self, *, correct: bool, per_class: int = 1) -> dict[str, torch.Tensor]:
        """For each true class, the indices of its ``per_class`` most confident correct (or
        wrong) predictions, most confident first; a class with none gets an empty tensor."""
        want = self.correct if correct else ~self.correct
        conf = self.confidence
        out = {}
        for c, name in enumerate(self.classes):
            idx = torch.nonzero(want & (self.targets == c)).flatten()
            order = torch.sort(conf[idx], descending=True, stable=True).indices
            out[name] = idx[order[:per_class]]
        return out

    def most_uncertain(self, k: int | None = None) -> torch.Tensor:
        """Indices of the items whose top probability is nearest to chance (1/K), least sure
        first: for two classes, the pictures the model calls closest to 50/50."""
        order = torch.sort(self.confidence, stable=True).indices
        return order[:k] if k is not None else order

    def suspects(self, *, duplicates: bool = True) -> Suspects:
        """This split's items ranked by the loss of their label, highest first, with groups
        of identical or near-identical pictures: the ones to check for a wrong label.
        A table with pictures in a notebook; see :mod:`deepstart.interpret.suspects`
        (``suspects_from_learner(learn)`` ranks train and valid together).

        Example:
            >>> Interpretation.from_learner(learn, "valid").suspects().rows(1)[0]["label"]
            'cat'
        """
        from deepstart.interpret.suspects import Suspects

        return Suspects.from_interpretations([self], duplicates=duplicates)

    def item(self, i: int) -> dict[str, Any]:
        """One item's true and predicted class, probability of the prediction, and loss."""
        i = int(i)
        return {
            "index": i,
            "true": self.classes[int(self.targets[i])],
            "pred": self.classes[int(self.preds[i])],
            "prob": float(self.confidence[i]),
            "loss": float(self.losses[i]),
        }

    def summary(self, *, top: int = 16) -> dict[str, Any]:
        """Everything above as JSON-able values (what ``interpretation.json`` holds)."""
        k = len(self.classes)
        return {
            "split": self.split,
            "n": len(self.targets),
            "accuracy": self.accuracy,
            "loss": self.loss,
            "loss_bits": self.loss / math.log(2),
            "chance_bits": math.log2(k) if k > 1 else 0.0,
            "classes": self.classes,
            "confusion": self.confusion_matrix().tolist(),
            "per_class": self.per_class(),
            "macro": self.macro_average(),
            "most_confused": [list(p) for p in self.most_confused(k=top)],
            "top_losses": [self.item(i) for i in self.top_losses(top)],
            "most_uncertain": [self.item(i) for i in self.most_uncertain(top)],
        }

    def text_summary(self, top: int = 10) -> str:
        """The tables for a terminal: accuracy, per-class precision/recall/F1, confusions."""
        k = len(self.classes)
        chance = math.log2(k) if k > 1 else 0.0
        width = max([len(c) for c in self.classes] + [len("macro average")])
        lines = [
            f"{self.split}: accuracy {self.accuracy:.4f} on {len(self.targets)} images; loss "
            f"{self.loss / math.log(2):.3f} bits (chance {chance:.3f})",
            "",
            f"  {'class':<{width}}  support  precision  recall      F1",
        ]

        def pct(v: float) -> str:
            return "      -" if math.isnan(v) else f"{v * 100:6.2f}%"

        for r in self.per_class():
            lines.append(
                f"  {r['class']:<{width}}  {r['support']:>7}    {pct(r['precision'])}  "
                f"{pct(r['recall'])} {pct(r['f1'])}"
            )
        m = self.macro_average()
        lines.append(
            f"  {'macro average':<{width}}  {'':>7}    {pct(m['precision'])}  "
            f"{pct(m['recall'])} {pct(m['f1'])}"
        )
        pairs = self.most_confused(k=top)
        lines += ["", "most confused (true -> predicted: count):" if pairs else "no mistakes"]
        lines += [f"  {t} -> {p}: {n}" for t, p, n in pairs]
        return "\n".join(lines)

    # -- in a notebook ----------------------------------------------------------------------
    def __repr__(self) -> str:  # the numbers, never the tensors
        return (
            f"Interpretation({self.split}: {len(self.targets)} images, {len(self.classes)} "
            f"classes, accuracy {self.accuracy:.4f}, loss {self.loss:.4f} nats)"
        )

    def _repr_html_(self, top: int = 5, max_classes: int = 20) -> str:
        """Accuracy and loss, the confusion matrix as a table (up to ``max_classes``
        classes; diagonal in bold, rows true, columns predicted) and the ``top`` confusions."""
        from deepstart.display import cell, html_table

        k = len(self.classes)
        chance = math.log2(k) if k > 1 else 0.0
        head = (
            f"<p><b>Interpretation</b> of {self.split}: accuracy <b>{self.accuracy:.2%}</b> on "
            f"{len(self.targets)} images; loss {self.loss / math.log(2):.3f} bits per image "
            f"(chance {chance:.3f})</p>"
        )
        if k <= max_classes:
            cm = self.confusion_matrix().tolist()
            rows = [
                [cell(name), *(f"<b>{v}</b>" if t == p else str(v) for p, v in enumerate(row))]
                for t, (name, row) in enumerate(zip(self.classes, cm))
            ]
            matrix = html_table(
                ["true \\ predicted", *self.classes], rows, raw=True, caption="confusion matrix"
            )
        else:
            matrix = f"<p>{k} classes: see interp.plot_confusion_matrix()</p>"
        pairs = self.most_confused(k=top)
        confused = (
            html_table(["true", "predicted", "count"], pairs, caption="most confused")
            if pairs
            else "<p>no mistakes</p>"
        )
        return head + matrix + confused

    def plot_confusion_matrix(self, normalise: bool = False) -> InlineFigure:
        """The confusion matrix as a figure: counts, or rows normalised to 1 (``normalise``:
        the diagonal is each class's recall).

        Example:
            >>> interp.plot_confusion_matrix(normalise=True)
        """
        from deepstart.interpret.plots import confusion_figure

        return confusion_figure(self, normalise=normalise)

    def plot_top_losses(self, k: int = 9, *, ncols: int = 3) -> InlineFigure:
        """The ``k`` pictures with the highest loss, titled "predicted / true" and the
        probability and loss (fastai's ``plot_top_losses``)."""
        from deepstart.interpret.plots import prediction_figure

        return prediction_figure(self, self.top_losses(k), title="Top losses", ncols=ncols)

    def plot_most_uncertain(self, k: int = 9, *, ncols: int = 3) -> InlineFigure:
        """The ``k`` pictures whose top probability is nearest to chance, least sure first."""
        from deepstart.interpret.plots import prediction_figure

        return prediction_figure(self, self.most_uncertain(k), title="Most uncertain", ncols=ncols)
