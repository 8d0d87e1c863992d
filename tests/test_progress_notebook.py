"""Progress everywhere: the notebook display (fake IPython display and a real kernel), the
plain "where it is" lines, progress on by default, quiet=True, the LR finder's sweep, and
the time estimate. Time is a fake clock advanced per batch: nothing here waits or times."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from deepstart.recipes import measured
from deepstart.recipes.choose import faster_recipe
from deepstart.train import notebook
from deepstart.train.callbacks import Callback
from deepstart.train.estimate import duration_text
from deepstart.train.learner import Learner
from deepstart.train.progress import Progress, SweepProgress, resolve_mode


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tick(Callback):
    """Every training batch "takes" ``dt`` seconds of the fake clock (before Progress sees
    the batch end: order 20)."""

    order = 5

    def __init__(self, clock: FakeClock, dt: float) -> None:
        self.clock, self.dt = clock, dt

    def after_batch(self) -> None:
        if self.learn.training:
            self.clock.now += self.dt


class FakeHandle:
    def __init__(self, bundle: dict) -> None:
        self.bundles = [bundle]

    def update(self, bundle: dict) -> None:
        self.bundles.append(bundle)

    @property
    def last(self) -> dict:
        return self.bundles[-1]


class FakeDisplay:
    """IPython's display(..., display_id=True) as the progress uses it; records every call."""

    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []

    def __call__(self, bundle: dict) -> FakeHandle:
        assert set(bundle) == {"text/html", "text/plain"}
        self.handles.append(FakeHandle(bundle))
        return self.handles[-1]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))


def learner(data, *cbs, **kw) -> Learner:
    return Learner(data, tiny_model(), batch_size=8, callbacks=list(cbs), guard=False, **kw)


def test_notebook_display_updates_in_place(toy_data):
    clock, show = FakeClock(), FakeDisplay()
    before = "ipywidgets" in sys.modules
    progress = Progress("notebook", clock=clock, display=show)
    learn = learner(toy_data, progress, Tick(clock, 0.01))
    learn.fit(2)
    n = len(learn.train_dl)
    assert len(show.handles) == 2  # one bar and one table, each updated in place
    bar, table = show.handles
    assert "<progress" in bar.bundles[0]["text/html"]
    final = table.last["text/html"]
    assert final.count("<tr>") == 1 + 2  # the header and one row per epoch
    assert "1/2" in final and "2/2" in final and "valid_loss" in final
    assert "done in" in bar.last["text/html"] and f"{n}/{n}" in bar.last["text/plain"]
    assert "ipywidgets" in sys.modules or not before  # never imported for this
    assert ("ipywidgets" in sys.modules) == before


def test_notebook_bar_is_throttled(toy_data):
    def mid_epoch_updates(dt: float) -> tuple[int, int]:
        clock, show = FakeClock(), FakeDisplay()
        learn = learner(toy_data, Progress("notebook", clock=clock, display=show), Tick(clock, dt))
        learn.fit(1)
        n = len(learn.train_dl)
        shown = [b["text/plain"] for b in show.handles[0].bundles]
        return sum(f" {i}/{n} " in s for s in shown for i in range(1, n)), n

    slow, n = mid_epoch_updates(1.0)  # a batch a second: every batch is drawn
    assert slow == n - 1
    fast, n = mid_epoch_updates(0.01)  # 100 batches a second: at most 5 draws a second
    assert 0 < fast <= int(n * 0.01 * 5) + 1


def test_plain_mode_says_where_a_long_epoch_is(toy_data):
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("plain", out, clock=clock, estimate_after=1e9)  # (no estimate line)
    learn = learner(toy_data, progress, Tick(clock, 4.0))
    learn.fit(1)
    n = len(learn.train_dl)
    where = [line for line in out.getvalue().splitlines() if "left in the epoch" in line]
    # 4 s a batch, a line 30 s after the last: after batches 8 and 16 (24, the last, has
    # its epoch row); 8 images in 4 s; 8 batches left of 4 s
    assert [int(re.search(r"batch (\d+)/", line)[1]) for line in where] == [8, 16]
    assert f"epoch 1/1: batch 16/{n}, 2.0 images/s, about 32 s left in the epoch" in where[1]

    clock, out = FakeClock(), io.StringIO()
    learn = learner(toy_data, Progress("plain", out, clock=clock), Tick(clock, 0.01))
    learn.fit(1)
    assert "left in the epoch" not in out.getvalue()


def test_estimate_said_once_for_a_long_fit_only(toy_data):
    clock, out = FakeClock(), io.StringIO()
    hint = "recipe quick reaches it sooner"
    progress = Progress("plain", out, clock=clock, hint=lambda s: hint)
    learn = learner(toy_data, progress, Tick(clock, 1.0))
    learn.fit(2)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("estimate:")]
    assert len(lines) == 1 and "for 2 epochs" in lines[0] and lines[0].endswith(hint)
    # 2 s timed after 2 warm-up batches: 4 s passed, the rest at 1 s a batch, validations
    # at a third of the cost per image of training (8 images a second)
    n, n_valid = len(learn.train_dl), learn.valid_dl.num_items
    expected = 4 + (2 * n - 4) + 2 * n_valid / 8 / 3
    assert progress.estimate.seconds == pytest.approx(expected)
    assert f"about {duration_text(expected)}" in lines[0]

    clock, out = FakeClock(), io.StringIO()
    progress = Progress("plain", out, clock=clock, hint=lambda s: hint)
    learner(toy_data, progress, Tick(clock, 0.01)).fit(2)
    assert progress.estimate.seconds < 30 and "estimate" not in out.getvalue()


def test_estimate_counts_the_later_epochs_at_their_own_cost(toy_data):
    # Progressive resizing times its first batches at the small size; the full-size epochs
    # after them cost more. Here epoch 1 costs half of epoch 2: each of its batches 1 s.
    from deepstart.train.progressive import ProgressiveResize

    class HalfFirst(Tick):
        def epoch_cost(self, epoch):
            return 0.5 if epoch == 0 else 1.0

    clock, out = FakeClock(), io.StringIO()
    progress = Progress("plain", out, clock=clock)
    learn = learner(toy_data, progress, HalfFirst(clock, 1.0))
    learn.fit(2)
    n, n_valid = len(learn.train_dl), learn.valid_dl.num_items
    expected = 4 + (n - 4) + 2 * n + 2 * n_valid / 8 / 3  # epoch 2's batches at 2 s
    assert progress.estimate.seconds == pytest.approx(expected)
    assert ProgressiveResize(5, 0.75).epoch_cost(4) == 0.5625
    assert ProgressiveResize(5, 0.75).epoch_cost(5) == 1.0


def test_estimate_shows_in_the_notebook_table(toy_data):
    clock, show = FakeClock(), FakeDisplay()
    learner(toy_data, Progress("notebook", clock=clock, display=show), Tick(clock, 1.0)).fit(2)
    assert "estimate: about" in show.handles[1].last["text/html"]


def test_progress_on_by_default_and_quiet_off(toy_data, capsys):
    learn = learner(toy_data)
    assert isinstance(learn.get_callback(Progress), Progress)
    learn.fit(1)
    assert "valid_loss" in capsys.readouterr().out  # pytest's stdout: no terminal, plain

    learn = learner(toy_data, quiet=True)
    assert learn.get_callback(Progress) is None
    learn.fit(1)
    learn.lr_find(num_it=5)
    assert capsys.readouterr().out == ""

    mine = Progress("none")
    learn = learner(toy_data, mine)  # the caller's own Progress replaces the default
    assert [cb for cb in learn.callbacks if isinstance(cb, Progress)] == [mine]
    learn.fit(1)
    assert capsys.readouterr().out == ""

    out = io.StringIO()  # a Progress given to one fit: the default stands aside there
    learn = learner(toy_data)
    learn.fit(1, callbacks=[Progress("plain", out)])
    assert capsys.readouterr().out == "" and "valid_loss" in out.getvalue()


def test_lr_find_shows_its_sweep(toy_data):
    out = io.StringIO()
    learner(toy_data, Progress("plain", out)).lr_find(num_it=6, stop_div=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("LR finder: 6 steps, lr 1.0e-07 to 1.0e+01")

    clock, show = FakeClock(), FakeDisplay()
    progress = Progress("notebook", clock=clock, display=show)
    assert isinstance(progress.for_sweep(object())[0], SweepProgress)
    learner(toy_data, progress).lr_find(num_it=6, stop_div=False)
    (bar,) = show.handles  # one bar, in place; the clock stood still: drawn at the start,
    assert len(bar.bundles) == 3 and "6/6" in bar.last["text/plain"]  # last step and end
    assert "(completed)" in bar.last["text/html"]


def test_auto_mode_picks_the_notebook_only_in_a_kernel(monkeypatch):
    IPython = pytest.importorskip("IPython")

    class Shell:
        kernel = None

    assert resolve_mode("auto", io.StringIO()) == "plain"
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())  # terminal IPython: no kernel
    assert not notebook.in_notebook() and resolve_mode("rich") == "rich"
    Shell.kernel = object()  # ipykernel's shell
    assert notebook.in_notebook()
    assert resolve_mode("auto") == resolve_mode("rich") == "notebook"
    assert resolve_mode("auto", io.StringIO()) == "plain"  # a file asked for: lines
    assert resolve_mode("plain") == "plain"


def test_faster_recipe_names_one_only_when_much_faster():
    # Against the recipes' measured figures, read here so a re-measurement needs no edit.
    fast, best = measured("mnist-fast"), measured("mnist-995")
    assert fast.median_seconds < best.median_seconds and fast.median < best.median
    hint = faster_recipe("mnist", None, 2 * best.median_seconds + 1)
    assert hint is not None and "--recipe mnist-995" in hint
    assert f"{best.median:.2%} test accuracy (median of its seeds)" in hint
    assert f"when measured on {best.machine}" in hint  # the slowest CPU's figures, named
    assert "mnist-fast" in faster_recipe("mnist", None, 2 * best.median_seconds - 1)
    assert faster_recipe("mnist", None, 2 * fast.median_seconds - 1) is None  # none under half
    assert faster_recipe("mnist", "mnist-995", 600) is None  # mnist-fast is less accurate
    assert faster_recipe("folder", None, 6000) is None  # photos: never measured as a time


def test_html_escapes_text():
    html = notebook.table_html(["a<b"], [["<x>"]], ["1 < 2"])
    assert "<x>" not in html and "&lt;x&gt;" in html and "1 &lt; 2" in html
    assert notebook.clock_text(3725) == "1:02:05"


def test_a_real_kernel_shows_html_progress_without_widget_warnings():
    """A notebook run by nbclient on a real ipykernel: the fit's outputs are display_data
    and update_display_data with text/html (the update arrives as a change to the first
    output), and nothing on stderr (rich's 'install "ipywidgets"' warning went there)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    code = "\n".join(
        [
            "import torch",
            "from torch import nn",
            "from deepstart import Learner",
            "from deepstart.data.dataset import make_dataset",
            "from tests.conftest import bars",
            "data = make_dataset('bars', bars(96), bars(24, seed=1), valid_pct=0.25, seed=0)",
            "model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))",
            "learn = Learner(data, model, batch_size=8)",
            "learn.fit(2)",
            "print(type(learn.get_callback(__import__('deepstart').Progress)).__name__,",
            "      learn.get_callback(__import__('deepstart').Progress).mode)",
        ]
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    updates: list[dict] = []

    class Client(nbclient.NotebookClient):
        def process_message(self, msg, cell, cell_index):  # see every update in place
            if msg["msg_type"] == "update_display_data":
                updates.append(msg["content"])
            return super().process_message(msg, cell, cell_index)

    root = str(Path(__file__).resolve().parents[1])
    Client(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": root}}).execute()
    outputs = nb.cells[0].outputs
    shown = [o for o in outputs if o.output_type == "display_data"]
    assert len(shown) == 2 and all("text/html" in o.data for o in shown)  # bar, table
    assert "<progress" in shown[0].data["text/html"] and "done in" in shown[0].data["text/html"]
    assert shown[1].data["text/html"].count("<tr>") == 3  # header + one row per epoch
    assert updates and all("text/html" in u["data"] for u in updates)
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    text = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "Progress notebook" in text and "ipywidgets" not in text


def test_runs_name_a_faster_recipe_in_their_estimate():
    from deepstart.config import DataConfig, ModelConfig, RunConfig
    from deepstart.run.runner import _Run

    cfg = RunConfig(data=DataConfig("mnist"), model=ModelConfig("mnist_cnn"))
    progress = _Run(cfg, None, False, None, None).progress()  # what deepstart train shows
    assert "--recipe mnist-995" in progress.estimate.hint(600)
    assert _Run(cfg, None, True, None, None).progress().mode == "none"  # quiet=True
