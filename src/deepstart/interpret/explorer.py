"""The report's clickable parts: a confusion matrix whose cells open their pictures, and the
top-losses and most-uncertain grids filtered by class.

Still one self-contained file: the pictures are embedded once, as ``data:`` URIs in a JSON
block, and a few lines of plain JavaScript build what a click asks for (no library, no
server). Only what can be shown is embedded: the ``CELL`` highest-loss pictures of each cell
(a cell of 900 correct 7s opens its 12 least sure ones) and the ``top`` highest-loss and
least-sure pictures of each true and each predicted class.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

import torch

from deepstart.interpret.thumbnails import data_uri

if TYPE_CHECKING:
    from deepstart.interpret.analysis import Interpretation

CELL = 12  # pictures a cell opens (highest loss first)
BUDGET = 2400  # at most this many pictures embedded (~1 KB each for 32 px colour: JPEG)

_STYLE = """<style>
table.cm td.cell{cursor:pointer;text-align:center;min-width:40px;padding:6px}
table.cm td.cell:hover{outline:2px solid #0969da}
table.cm td.cell.sel{outline:3px solid #0969da}
table.cm th.pred{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}
.pics{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.pics figure{margin:0;width:104px;font-size:11px;text-align:center}
.pics figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;
  border:2px solid #1a7f37}
.pics figure.wrong img{border-color:#cf222e}
</style>"""

_SCRIPT = """<script>
(() => {
const D = JSON.parse(document.getElementById('explore-data').textContent);
function pics(box, idx, note) {
  box.textContent = '';
  if (note) { const p = document.createElement('p'); p.className = 'muted';
              p.textContent = note; box.appendChild(p); }
  const grid = document.createElement('div'); grid.className = 'pics';
  for (const i of idx) {
    const [t, p, prob, loss] = D.items[i];
    const f = document.createElement('figure'); f.dataset.index = i;
    if (t !== p) f.className = 'wrong';
    const img = document.createElement('img'); img.src = D.thumbs[i];
    img.alt = D.classes[t] + ' -> ' + D.classes[p]; f.appendChild(img);
    const c = document.createElement('figcaption');
    c.textContent = D.classes[t] + ' → ' + D.classes[p] + ' ' + Math.round(prob * 100) +
      '%, loss ' + loss.toFixed(2);
    f.appendChild(c); grid.appendChild(f);
  }
  box.appendChild(grid);
}
for (const td of document.querySelectorAll('table.cm td.cell')) {
  td.onclick = () => {
    for (const o of document.querySelectorAll('table.cm td.sel')) o.classList.remove('sel');
    td.classList.add('sel');
    const t = +td.dataset.t, p = +td.dataset.p, idx = D.cells[t + ',' + p] || [];
    const n = +td.dataset.n;
    pics(document.getElementById('cm-pics'), idx, 'true ' + D.classes[t] + ' → predicted ' +
      D.classes[p] + ': ' + n + (n === 1 ? ' picture' : ' pictures') +
      (idx.length < n ? ', the ' + idx.length + ' with the highest loss' : ''));
  };
}
for (const key of ['losses', 'uncertain']) {
  const cls = document.getElementById(key + '-class');
  const by = document.getElementById(key + '-by');
  const draw = () => {
    const c = cls.value === '' ? -1 : +cls.value, col = by.value === 'pred' ? 1 : 0;
    const idx = D[key].filter(i => c < 0 || D.items[i][col] === c).slice(0, D.top);
    pics(document.getElementById(key + '-pics'), idx, idx.length ? '' : 'none');
  };
  cls.onchange = draw; by.onchange = draw; draw();
}
})();
</script>"""


def explorer_data(interp: Interpretation, top: int = 16) -> dict:
    """What the page embeds: per item ``[true, pred, prob of pred, loss]``, its picture,
    each cell's items (highest loss first) and the loss and uncertainty orders."""
    k = len(interp.classes)
    t, p = interp.targets, interp.preds
    loss, conf = interp.losses, interp.confidence
    by_loss = torch.sort(loss, descending=True, stable=True).indices
    by_doubt = torch.sort(conf, stable=True).indices
    cm = interp.confusion_matrix()
    filled = max(int((cm > 0).sum()), 1)
    cell_cap = max(2, min(CELL, BUDGET // 2 // filled))
    per_class = max(4, min(top, BUDGET // 2 // max(4 * k, 1)))
    cells: dict[str, list[int]] = {}
    for i in by_loss.tolist():  # highest loss first, so each cell keeps its first ones
        key = f"{int(t[i])},{int(p[i])}"
        if len(cells.setdefault(key, [])) < cell_cap:
            cells[key].append(i)
    lists = {"losses": by_loss.tolist(), "uncertain": by_doubt.tolist()}
    keep: set[int] = {i for v in cells.values() for i in v}
    for name, order in lists.items():
        picked = set(order[:top])  # the unfiltered grid
        for col in (t, p):  # and the first ones of each true and each predicted class
            counts = [0] * k
            for i in order:
                c = int(col[i])
                if counts[c] < per_class:
                    counts[c] += 1
                    picked.add(i)
        lists[name] = [i for i in order if i in picked]
        keep |= picked
    return {
        "classes": list(interp.classes),
        "top": top,
        "items": {
            i: [int(t[i]), int(p[i]), round(float(conf[i]), 4), round(float(loss[i]), 4)]
            for i in sorted(keep)
        },
        "thumbs": {i: data_uri(interp.images.images[i]) for i in sorted(keep)},
        "cells": cells,
        **lists,
    }


def confusion_table(interp: Interpretation) -> str:
    """The confusion matrix as an HTML table, shaded by each row's share; cells clickable."""
    e = html.escape
    cm = interp.confusion_matrix()
    share = interp.confusion_matrix(normalise=True)
    names = interp.classes
    head = "".join(f'<th class="pred">{e(c)}</th>' for c in names)
    rows = []
    for ti, tname in enumerate(names):
        tds = []
        for pi in range(len(names)):
            n, s = int(cm[ti, pi]), float(share[ti, pi])
            hue = "9,105,218" if ti == pi else "207,34,46"  # blue right, red wrong
            tds.append(
                f'<td class="cell" data-t="{ti}" data-p="{pi}" data-n="{n}" '
                f'style="background:rgba({hue},{s:.2f})" title="{e(tname)} → {e(names[pi])}: '
                f'{n} ({s:.1%} of {e(tname)})">{n}</td>'
            )
        rows.append(f"<tr><th>{e(tname)}</th>{''.join(tds)}</tr>")
    return (
        f'<table class="cm"><tr><th>true ↓ / predicted →</th>{head}</tr>{"".join(rows)}</table>'
        '<div id="cm-pics"><p class="muted">Click a cell to see its pictures.</p></div>'
    )


def filtered_grid(key: str, title: str, caption: str, classes: list[str]) -> str:
    """A heading, a class filter (by true or predicted class) and the grid's box."""
    e = html.escape
    opts = "".join(f'<option value="{i}">{e(c)}</option>' for i, c in enumerate(classes))
    return (
        f"<h3>{e(title)}</h3><p class='muted'>{e(caption)} "
        f'<label>class <select id="{key}-class"><option value="">all</option>{opts}</select>'
        f'</label> <select id="{key}-by"><option value="true">as the true class</option>'
        f'<option value="pred">as the predicted class</option></select></p>'
        f'<div id="{key}-pics"></div>'
    )


def explorer_assets(interp: Interpretation, top: int = 16) -> str:
    """The style, the embedded data and the script: once per page, after the sections."""
    blob = json.dumps(explorer_data(interp, top)).replace("</", "<\\/")
    return f'{_STYLE}<script type="application/json" id="explore-data">{blob}</script>{_SCRIPT}'
