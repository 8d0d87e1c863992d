"""Which training and validation pictures to look at first: ranked by loss, and look-alikes.

On a photo folder gathered by hand, the pictures a trained model gets most wrong are often
mislabelled, not a picture of any class, or the same picture twice. :class:`Suspects` holds
every item of one or more splits, ranked by the loss of its own label (``-log p(label)`` in
nats, highest first), with groups of identical or near-identical pictures
(:mod:`deepstart.interpret.duplicates`). It shows as a table in a notebook; the run layer
(``deepstart clean``) turns it into a page with keep / relabel / delete buttons.

Training pictures must be scored by the model in eval mode, without augmentation, as the
validation ones are: :func:`suspects_from_learner` predicts each split through
``Learner.predict`` (which does both).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from deepstart.data.dataset import ImageSet
from deepstart.interpret.duplicates import duplicate_groups, pixel_digest
from deepstart.interpret.thumbnails import data_uri

if TYPE_CHECKING:
    from deepstart.interpret.analysis import Interpretation
    from deepstart.train.learner import Learner

SHOWN = 24  # rows a notebook's table shows


@dataclass
class Suspects:
    """Items of one or more splits, ranked by the loss of their label, highest first.

    Attributes:
        classes: class names, ``classes[label]``.
        images: each split's images as the model saw them (for the pictures).
        split: ``(M,)`` which split each row comes from.
        index: ``(M,)`` int64 index of each row in its split.
        label: ``(M,)`` int64 label of each row.
        probs: ``(M, K)`` float32 predicted probabilities.
        groups: look-alike pictures: lists of row numbers (two or more, ascending).
        names: what each row is called: a file path when known, else ``"train[17]"``.

    Example:
        >>> sus = Interpretation.from_learner(learn, "valid").suspects()
        >>> sus.rows(3)[0]["label"], sus.rows(3)[0]["pred"]
        ('cat', 'dog')
        >>> sus  # in a notebook: a table with the pictures
    """

    classes: list[str]
    images: dict[str, ImageSet]
    split: list[str]
    index: torch.Tensor
    label: torch.Tensor
    probs: torch.Tensor
    groups: list[list[int]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [f"{s}[{int(i)}]" for s, i in zip(self.split, self.index)]
        self._loss = _losses(self.probs, self.label)  # once: rows() reads it per row

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_interpretations(
        cls, interps: Sequence[Interpretation], *, duplicates: bool = True
    ) -> Suspects:
        """Rank the items of several splits' interpretations together (one model's)."""
        if not interps:
            raise ValueError("no interpretations to rank")
        classes = list(interps[0].classes)
        images = {it.split: it.images for it in interps}
        if len(images) != len(interps):
            raise ValueError("two interpretations of one split")
        split = [it.split for it in interps for _ in range(len(it.targets))]
        index = torch.cat([torch.arange(len(it.targets)) for it in interps])
        label = torch.cat([it.targets for it in interps])
        probs = torch.cat([it.probs for it in interps])
        loss = _losses(probs, label)
        order = torch.sort(loss, descending=True, stable=True).indices  # (M,) rank -> item
        groups: list[list[int]] = []
        if duplicates and len(order) > 1:
            rank_of = torch.empty_like(order)
            rank_of[order] = torch.arange(len(order))
            pixels = [it.images.images for it in interps]  # each (N_s, C, H, W), in row order
            groups = [sorted(int(rank_of[i]) for i in g) for g in duplicate_groups(pixels)]
            groups.sort(key=lambda g: g[0])
        return cls(
            classes, images, [split[i] for i in order.tolist()], index[order], label[order],
            probs[order], groups,
        )  # fmt: skip

    # -- per row ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.label)

    @property
    def loss(self) -> torch.Tensor:
        """``(M,)`` ``-log p(label)`` in nats, highest first (see ``Interpretation.losses``)."""
        return self._loss

    @property
    def pred(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    def image(self, row: int) -> torch.Tensor:
        """``(C, H, W)`` uint8 picture of a row."""
        return self.images[self.split[row]].images[int(self.index[row])]

    def row(self, r: int, groups: dict[int, int] | None = None) -> dict[str, Any]:
        """One row as plain values: where it is, its label and the model's view of it."""
        label, pred = int(self.label[r]), int(self.probs[r].argmax())
        groups = self.group_of() if groups is None else groups
        return {
            "rank": r,
            "name": self.names[r],
            "split": self.split[r],
            "index": int(self.index[r]),
            "label": self.classes[label],
            "pred": self.classes[pred],
            "prob": float(self.probs[r, pred]),
            "p_label": float(self.probs[r, label]),
            "loss": float(self._loss[r]),
            "group": groups.get(r),
        }

    def rows(self, k: int | None = None) -> list[dict[str, Any]]:
        """The first ``k`` rows (all by default), highest loss first."""
        n = len(self) if k is None else min(k, len(self))
        groups = self.group_of()
        return [self.row(r, groups) for r in range(n)]

    def group_of(self) -> dict[int, int]:
        """Row number -> number of its look-alike group, for the rows that have one."""
        return {r: g for g, members in enumerate(self.groups) for r in members}

    def duplicates(self) -> list[dict[str, Any]]:
        """Each look-alike group: its rows, whether their pixels are identical, and whether
        their labels disagree (then at least one label is wrong)."""
        out = []
        for g, members in enumerate(self.groups):
            digests = pixel_digest(torch.stack([self.image(r) for r in members]))
            labels = {int(self.label[r]) for r in members}
            out.append(
                {
                    "group": g,
                    "rows": list(members),
                    "identical": len(set(digests)) == 1,
                    "labels_disagree": len(labels) > 1,
                }
            )
        return out

    def summary(self, top: int = 100) -> dict[str, Any]:
        """JSON-able: the counts, the first ``top`` rows and every look-alike group."""
        return {
            "n": len(self),
            "splits": sorted(set(self.split)),
            "classes": list(self.classes),
            "mean_loss": float(self.loss.double().mean()) if len(self) else math.nan,
            "top": self.rows(top),
            "duplicates": [
                {**d, "names": [self.names[r] for r in d["rows"]]} for d in self.duplicates()
            ],
        }

    # -- notebooks --------------------------------------------------------------------------
    def __repr__(self) -> str:
        splits = ", ".join(sorted(set(self.split)))
        return (
            f"Suspects({len(self)} items of {splits}, ranked by loss; "
            f"{len(self.groups)} look-alike groups)"
        )

    def _repr_html_(self) -> str:
        """The first ``SHOWN`` rows with their pictures, and the look-alike groups."""
        e = html.escape
        head = "".join(f"<th>{c}</th>" for c in ("", "item", "label", "predicted", "loss"))
        body = "".join(
            f'<tr><td><img src="{data_uri(self.image(r["rank"]))}" width="48" '
            f'style="image-rendering:pixelated"></td><td>{e(r["name"])}</td>'
            f"<td>{e(r['label'])}</td><td>{e(r['pred'])} ({r['prob']:.0%})</td>"
            f"<td>{r['loss']:.2f}</td></tr>"
            for r in self.rows(SHOWN)
        )
        dups = "".join(
            "<li>" + ", ".join(e(f"{self.names[r]} ({self.classes[int(self.label[r])]})")
                               for r in d["rows"])
            + (" — <b>labels disagree</b>" if d["labels_disagree"] else "")
            + ("" if d["identical"] else " (near-identical)") + "</li>"
            for d in self.duplicates()[:SHOWN]
        )  # fmt: skip
        more = f" (first {SHOWN})" if len(self.groups) > SHOWN else ""
        return f"<p>{e(repr(self))}</p><table><tr>{head}</tr>{body}</table>" + (
            f"<p>look-alike groups{more}:</p><ul>{dups}</ul>" if dups else ""
        )


def suspects_from_learner(
    learn: Learner, splits: Sequence[str] = ("train", "valid"), *, duplicates: bool = True
) -> Suspects:
    """Predict ``splits`` of the learner's data (eval mode, no augmentation) and rank them.

    Example:
        >>> sus = suspects_from_learner(learn)  # train and valid together
        >>> [r["name"] for r in sus.rows(3)]
        ['train[512]', 'valid[17]', 'train[4]']
    """
    from deepstart.interpret.analysis import Interpretation

    present = [s for s in splits if getattr(learn.data, s, None) is not None]
    interps = [Interpretation.from_learner(learn, s) for s in present]
    return Suspects.from_interpretations(interps, duplicates=duplicates)


def _losses(probs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``-log p(label)`` in nats, clamped as ``Interpretation.losses`` is (finite, >= 0)."""
    p = probs.gather(1, label[:, None].long())[:, 0]
    return (-p.clamp_min(torch.finfo(torch.float32).tiny).log()).clamp_min(0.0)
