"""The report's slow panels, drawn while the budget allows (:mod:`deepstart.report.budget`).

Each panel is a figure, and some run the model again. They are drawn cheapest first, so a
short run's report keeps what teaches most for least (first-layer weights, feature maps),
and a long run's report has them all:

==================  =============================================  =====================
panel               what it shows                                  cost
==================  =============================================  =====================
kernels             first-layer weights                            1 figure
feature maps        the first conv layer's output for one picture  1 figure, 1 forward
hand kernels        hand-made 3×3 kernels on one picture           1 figure
confident grids     the surest right and wrong pictures per class  2 figures
attribution         saliency, SmoothGrad (25 passes), Grad-CAM     1 figure, ~28 passes
filters             activation maximisation (48 steps of 16)       1 figure, ~96 passes
plot files          plots/*.png of the page's own tables/curves    5 figures
==================  =============================================  =====================

A "pass" is a forward and backward pass of the model on the report's example pictures
(``EXAMPLES`` of them), timed once on this machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepstart.interpret import plots
from deepstart.interpret.analysis import Interpretation
from deepstart.report.budget import Budget
from deepstart.report.page import esc, img
from deepstart.train.learner import Learner

EXAMPLES = 8  # pictures of the attribution panel (and of the timed pass)
FILTER_SIDE = 64  # the largest side of the activation-maximisation images
FILTERS = 16  # channels shown by activation maximisation
SMOOTHGRAD = 25  # noisy copies averaged by SmoothGrad
ASCENT_STEPS = 48  # gradient-ascent steps of activation maximisation
TOP_LOSSES = 16  # pictures in the top-losses and most-uncertain grids
PER_CLASS = 2  # most confident right / wrong pictures per class


@dataclass
class Drawn:
    """What the slow panels produced: HTML per panel, figure files written."""

    html: dict[str, str] = field(default_factory=dict)
    written: dict[str, Path] = field(default_factory=dict)


def examples(interp: Interpretation) -> list[int]:
    """Pictures for the heat maps: the most confident correct picture of up to half of
    ``EXAMPLES`` classes, then top losses (where did it look when it was wrong?)."""
    right = [int(v[0]) for v in interp.most_confident(correct=True).values() if len(v)]
    picked = right[: EXAMPLES // 2]
    for i in interp.top_losses(EXAMPLES).tolist():
        if len(picked) < EXAMPLES and i not in picked:
            picked.append(i)
    return picked or [0]


def _channels_of(model: torch.nn.Module, layer: str) -> int:
    return int(dict(model.named_modules())[layer].out_channels)


def layer_name(model: torch.nn.Module, layer: str) -> str:
    """``body.4`` -> ``body.4 (conv 16→32, 3×3)``: which layer a picture is of."""
    conv = dict(model.named_modules())[layer]
    k = "×".join(str(v) for v in conv.kernel_size)
    return f"{layer} (conv {conv.in_channels}→{conv.out_channels}, {k})"


class Panels:
    """Draws the slow panels of one report into ``out`` (``plots/``) within ``budget``."""

    def __init__(
        self,
        learn: Learner,
        interp: Interpretation,
        out: Path,
        budget: Budget,
        run: dict[str, Any],
        layer: str | None = None,
    ) -> None:
        from deepstart.interpret import vision

        self.learn, self.interp, self.out, self.budget = learn, interp, out, budget
        self.run, self.layer = run, layer
        self.drawn = Drawn()
        prep = learn.preprocess
        self.picked = examples(interp)
        self.x = vision.normalise(interp.images.images[self.picked], prep.mean, prep.std).to(
            learn.device
        )
        self.convs = vision.conv_layers(learn.model)
        # the pictures of each grid of plots.GRIDS, and its title (two panels draw grids)
        self.chosen = plots.grid_indices(interp, TOP_LOSSES, PER_CLASS)
        self.titles = {stem: title for stem, title, _ in plots.GRIDS}

    def draw_all(self) -> Drawn:
        self.kernels()
        if self.convs:
            self.feature_maps()
        self.hand_kernels()
        self.confident_grids()
        saliency = self._timed_saliency()
        if saliency is not None:
            self.attribution(saliency)
            if self.convs:
                self.filters()
        else:  # nothing left to time a pass with: their cost is unknown, and too much
            self.budget.skip("attribution")
            if self.convs:
                self.budget.skip("filters")
        self.plot_files()
        return self.drawn

    # -- one method per panel: estimate, ask the budget, draw --------------------------------
    def _fits(self, name: str, figures: int, passes: float = 0.0) -> bool:
        estimate = self.budget.figure_seconds(figures) + passes * (self.budget.pass_seconds or 0)
        return self.budget.allows(name, estimate)

    def kernels(self) -> None:
        from deepstart.interpret import vision, vision_plots

        if not self._fits("first-layer weights", 1):
            return
        with self.budget.panel("first-layer weights", figures=1):
            weights = vision.first_layer_weights(self.learn.model)
            path = vision_plots.kernel_grid(weights, self.out / "kernels.png", title="first layer")
        self.drawn.written["kernels"] = path
        self.drawn.html["kernels"] = "<h3>First-layer weights</h3>" + img(
            path,
            "each kernel (or, for a dense net, each unit's weights over the image) scaled to "
            "its own range",
        )

    def feature_maps(self) -> None:
        from deepstart.interpret import vision, vision_plots

        if not self._fits("feature maps", 1, passes=0.5):
            return
        model = self.learn.model
        shown = self.layer or self.convs[0]
        with self.budget.panel("feature maps", figures=1):
            maps = vision.feature_maps(model, self.x[:1], shown)
            path = vision_plots.feature_map_grid(maps, self.out / "feature_maps.png", title=shown)
        self.drawn.written["feature_maps"] = path
        self.drawn.html["feature_maps"] = (
            f"<h3>Feature maps of {esc(layer_name(model, shown))}</h3>"
            + img(path, f"the output channels of layer {shown} for the first image above")
        )

    def hand_kernels(self) -> None:
        from deepstart.interpret import vision, vision_plots

        if not self._fits("hand kernels", 1):
            return
        first = self.interp.images.images[self.picked[0]]
        with self.budget.panel("hand kernels", figures=1):
            path = vision_plots.hand_kernels_figure(
                first, vision.apply_kernels(first), self.out / "hand_kernels.png"
            )
        self.drawn.written["hand_kernels"] = path
        self.drawn.html["hand_kernels"] = "<h3>What a convolution does</h3>" + img(
            path, "hand-made 3×3 kernels applied to one test image"
        )

    def confident_grids(self) -> None:
        if not self._fits("confident grids", 2):
            return
        with self.budget.panel("confident grids", figures=2):
            for stem in ("confident_wrong", "confident_right"):
                self.drawn.written[stem] = self._grid(stem)

    def _timed_saliency(self) -> torch.Tensor | None:
        """Saliency of the examples, timing the one pass it takes (the unit of the costs
        below); None when the budget is already spent."""
        from deepstart.interpret import vision

        if self.budget.left() <= 0:
            return None
        t = time.perf_counter()
        maps = vision.saliency(self.learn.model, self.x)
        self.budget.pass_seconds = time.perf_counter() - t
        return maps

    def attribution(self, saliency: torch.Tensor) -> None:
        from deepstart.interpret import vision, vision_plots

        if not self._fits("attribution", 1, passes=SMOOTHGRAD + 2):
            return
        model, interp = self.learn.model, self.interp
        with self.budget.panel("attribution", figures=1):
            maps = {"saliency": saliency, "SmoothGrad": vision.smoothgrad(model, self.x)}
            skipped = ""
            try:
                maps["Grad-CAM"] = vision.grad_cam(model, self.x)
            except vision.VisionError as e:
                skipped = f"<p class='muted'>Grad-CAM skipped: {esc(str(e))}</p>"
            titles = [f"{it['true']} → {it['pred']}" for it in map(interp.item, self.picked)]
            images = interp.images.images[self.picked]
            path = vision_plots.heatmap_grid(
                images, maps, self.out / "attribution.png", titles=titles
            )
        self.drawn.written["attribution"] = path
        self.drawn.html["attribution"] = (
            "<h3>Where the model looks: " + ", ".join(maps) + "</h3>" + skipped
        ) + img(
            path,
            "heat maps for the predicted class: confidently right pictures, then the top "
            "losses (title: true → predicted)",
        )

    def filters(self) -> None:
        from deepstart.interpret import vision, vision_plots

        prep, model = self.learn.preprocess, self.learn.model
        side = (min(prep.size[0], FILTER_SIDE), min(prep.size[1], FILTER_SIDE))
        # passes of EXAMPLES pictures at full size: FILTERS pictures at ``side``, each step
        scale = FILTERS / len(self.picked) * (side[0] * side[1]) / (prep.size[0] * prep.size[1])
        if not self._fits("filters", 1, passes=ASCENT_STEPS * scale):
            return
        which = "the chosen" if self.layer else "the last"
        layer = self.layer or self.convs[-1]
        n = min(FILTERS, _channels_of(model, layer))
        with self.budget.panel("filters", figures=1):
            # At most FILTER_SIDE px a side: a filter's pattern shows as well, and each of
            # the ascent steps costs a forward and backward pass (30 s for EfficientNet-Lite0
            # at 224 px on 2 cores, 2 s at 64 px).
            pictures = vision.visualise_filters(
                model,
                layer,
                list(range(n)),
                size=side,
                in_channels=prep.channels,
                mean=prep.mean,
                std=prep.std,
                steps=ASCENT_STEPS,
            )
            path = vision_plots.filter_grid(pictures, self.out / "filters.png", title=layer)
        self.drawn.written["filters"] = path
        self.drawn.html["filters"] = f"<h3>Filters of {esc(layer_name(model, layer))}</h3>" + img(
            path,
            f"activation maximisation: inputs optimised to excite each of the first {n} "
            f"channels of {which} conv layer (gradient ascent with jitter)",
        )

    def plot_files(self) -> None:
        """plots/*.png of what the page shows as tables, SVG and thumbnails: for slides and
        for ``deepstart interpret``'s users; not embedded."""
        if not self._fits("plot files", 5):
            return
        interp, run, learn = self.interp, self.run, self.learn
        k = len(interp.classes)
        with self.budget.panel("plot files", figures=5):
            w = self.drawn.written
            w["samples"] = plots.sample_grid(
                learn.data.train, self.out / "samples.png", per_class=8, title="train samples"
            )
            if run["history"]:
                batches = run["batches"]
                w["curves"] = plots.curves_plot(
                    run["history"],
                    self.out / "curves.png",
                    batch_losses=batches.get("loss", ()),
                    batch_lrs=batches.get("lr", ()),
                    per_epoch=batches.get("per_epoch", 0),
                    chance_bits=math.log2(k) if k > 1 else None,
                    events=run["events"],
                )
            w["confusion"] = plots.confusion_plot(interp, self.out / "confusion.png")
            for stem in ("top_losses", "uncertain"):
                w[stem] = self._grid(stem)

    def _grid(self, stem: str) -> Path:
        """plots/<stem>.png: the pictures :func:`plots.grid_indices` chose for that grid."""
        return plots.prediction_grid(
            self.interp, self.chosen[stem], self.out / f"{stem}.png", title=self.titles[stem]
        )


def vision_section(drawn: Drawn, left_out: str) -> str:
    """'What the network sees': the vision panels that were drawn, in page order."""
    order = ("kernels", "hand_kernels", "feature_maps", "filters", "attribution")
    body = "".join(drawn.html[k] for k in order if k in drawn.html)
    if not body:
        body = "<p>No panel of this section fitted the report's time budget.</p>"
    return body + left_out
