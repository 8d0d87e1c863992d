"""The clickable pages of issue 23 in headless Chromium: a click on a confusion-matrix cell of
report.html shows that cell's pictures, the grids filter by class, and the choices made in
clean.html become a plan that ``deepstart clean --apply`` carries out."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.cli import main
from deepstart.interpret.analysis import Interpretation
from deepstart.report import build_report
from deepstart.run.clean import clean_run
from deepstart.run.rundir import load_run_learner
from tests.browser import find_chromium, open_page
from tests.test_clean import copy_of, make_folder, train_on

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    if find_chromium() is None:
        pytest.skip("headless Chromium not found (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSTART_CACHE", str(tmp / "cache"))
        info = make_folder(tmp / "bars")
        run_dir = train_on(tmp / "bars", tmp / "runs", "--epochs", "2")
        build_report(run_dir)
        learn = load_run_learner(run_dir, log=lambda m: None)
        interp = Interpretation.from_learner(learn, "test")
    return {**info, "folder": tmp / "bars", "run": run_dir, "interp": interp}


def pixels(uri: str) -> np.ndarray:
    head, data = uri.split(",", 1)
    assert head == "data:image/png;base64"  # grey 16 px: exact PNG pixels
    return np.array(Image.open(io.BytesIO(base64.b64decode(data))))


def shown(page, box: str) -> list[dict]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('#{box} figure')).map(f => ({{"
        "i: +f.dataset.index, src: f.querySelector('img').src, "
        "text: f.querySelector('figcaption').textContent}))"
    )


def click(page, selector: str) -> None:
    page.evaluate(
        f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})"
    )
    page.click(selector)


def pick(page, select: str, value: str) -> None:
    """Choose ``value`` in the ``<select id=select>`` as a user would (its change handler)."""
    page.evaluate(
        f"(() => {{ const s = document.getElementById('{select}'); s.value = '{value}';"
        " s.onchange(); })()"
    )


def test_a_click_on_a_confusion_cell_shows_its_pictures(planted):
    interp = planted["interp"]
    cm = interp.confusion_matrix()
    t, p = map(int, divmod(int(torch.argmax(cm - 1000 * torch.eye(len(cm)).long())), len(cm)))
    assert t != p and cm[t, p] > 0  # the most frequent mistake, and a diagonal cell after it
    url = (planted["run"] / "report.html").resolve().as_uri()
    with open_page(url, height=900) as page:
        for ti, pi in ((t, p), (t, t)):
            click(page, f'td.cell[data-t="{ti}"][data-p="{pi}"]')
            figs = shown(page, "cm-pics")
            want = torch.nonzero((interp.targets == ti) & (interp.preds == pi)).flatten()
            want = want[torch.sort(interp.losses[want], descending=True, stable=True).indices]
            assert [f["i"] for f in figs] == want[: len(figs)].tolist()
            assert len(figs) == min(len(want), 12)
            names = interp.classes
            for f in figs:  # the very test picture, captioned true -> predicted
                assert np.array_equal(pixels(f["src"]), interp.images.images[f["i"], 0].numpy())
                assert f["text"].startswith(f"{names[ti]} → {names[pi]} ")
            note = page.evaluate("document.querySelector('#cm-pics p').textContent")
            assert f"{int(cm[ti, pi])} picture" in note
        assert page.errors() == []


def test_the_top_losses_grid_filters_by_class(planted):
    interp = planted["interp"]
    url = (planted["run"] / "report.html").resolve().as_uri()
    with open_page(url, height=900) as page:
        everything = [f["i"] for f in shown(page, "losses-pics")]
        assert everything == interp.top_losses(16).tolist()
        for by, col in (("true", interp.targets), ("pred", interp.preds)):
            page.evaluate(f"document.getElementById('losses-by').value = '{by}'")
            pick(page, "losses-class", "1")
            idx = [f["i"] for f in shown(page, "losses-pics")]
            mine = torch.nonzero(col == 1).flatten()
            mine = mine[torch.sort(interp.losses[mine], descending=True, stable=True).indices]
            assert idx == mine[:16].tolist() and idx
        pick(page, "uncertain-class", "2")
        for i in (f["i"] for f in shown(page, "uncertain-pics")):
            assert int(interp.targets[i]) == 2
        assert page.errors() == []


def test_choices_in_clean_html_become_a_plan_that_applies(planted, tmp_path):
    folder = copy_of(planted, tmp_path)
    run = planted["run"]
    ranked = clean_run(run, top=20, data_dir=str(folder), log=lambda m: None)
    first, second = ranked.files[0], ranked.files[1]
    rows = ranked.suspects.rows(2)
    url = (run / "clean.html").resolve().as_uri()
    with open_page(url, height=900) as page:
        card = '#ranked .item[data-row="{}"]'
        click(page, card.format(0) + ' button[data-act="relabel"]')
        click(page, card.format(1) + ' button[data-act="delete"]')
        click(page, card.format(1) + ' button[data-act="keep"]')  # changed my mind
        click(page, card.format(1) + ' button[data-act="delete"]')
        assert page.evaluate("document.getElementById('count').textContent") == "2 changes"
        plan = page.evaluate("window.deepstartPlan()")
        click(page, "#export")
        assert json.loads(page.evaluate("document.getElementById('plan').textContent")) == plan
        page.evaluate("const s = document.getElementById('split'); s.value = 'valid'; s.onchange()")
        hidden = page.evaluate(
            "Array.from(document.querySelectorAll('#ranked .item')).filter(d => !d.hidden)"
            ".every(d => d.dataset.split === 'valid')"
        )
        assert hidden and page.errors() == []
    assert plan["root"] == str(folder.resolve()) and plan["deepstart"] == "clean-plan"
    assert plan["actions"] == [
        {"file": first, "action": "relabel", "to": rows[0]["pred"]},  # the model's guess first
        {"file": second, "action": "delete"},
    ]
    path = tmp_path / "clean-plan.json"
    path.write_text(json.dumps(plan))
    assert main(["clean", str(run), "--data", str(folder), "--apply", str(path)]) == 0
    assert not (folder / first).exists() and not (folder / second).exists()
    assert list((folder / "train" / rows[0]["pred"]).glob(Path(first).stem + "*"))
