"""``clean.html``: the ranked pictures with keep / relabel / delete buttons, and a plan to export.

One self-contained page (pictures embedded, plain JavaScript, no server): the rows of a
:class:`~deepstart.interpret.suspects.Suspects` highest loss first, then the groups of
look-alike pictures. Each picture has three buttons; relabel offers the classes, the model's
guess first. Nothing changes on disk from the page: "Export plan" downloads
``clean-plan.json``, which ``deepstart clean RUN_DIR --apply clean-plan.json`` carries out.
Without files (a built-in dataset, an archive) the page only shows.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

from deepstart.interpret.html import CSS
from deepstart.interpret.suspects import Suspects
from deepstart.interpret.thumbnails import data_uri

MAX_GROUPS = 200  # look-alike groups shown (suspects.json has them all)

_STYLE = """
.bar{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin:12px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.item{border:2px solid #d0d7de;border-radius:6px;padding:6px;width:150px;font-size:12px}
.item img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;display:block;
  margin:0 auto 4px;background:#f6f8fa}
.item .name{word-break:break-all;color:#656d76}
.item.relabel{border-color:#bf8700;background:#fff8c5}
.item.delete{border-color:#cf222e;background:#ffebe9;opacity:.75}
.item button{font-size:11px;padding:1px 5px;margin:2px 1px;cursor:pointer}
.item button.on{font-weight:bold;outline:2px solid #0969da}
.item select{font-size:11px;max-width:140px}
.group{border:1px dashed #8c959f;border-radius:8px;padding:8px;margin:10px 0}
.warn{color:#cf222e;font-weight:bold}
pre#plan{background:#f6f8fa;padding:8px;max-height:240px;overflow:auto;font-size:12px}
pre#plan:empty{display:none}
"""

# The page's behaviour: ROWS/GROUPS/INFO come from the JSON above it. State is kept per file,
# so a picture shown twice (in the ranking and in a group) shows one choice.
_SCRIPT = """
const DATA = JSON.parse(document.getElementById('clean-data').textContent);
const state = {};  // file -> {action: 'relabel'|'delete', to: class}
function card(r) {
  const row = DATA.rows[r];
  const div = document.createElement('div');
  div.className = 'item'; div.dataset.row = r; div.dataset.split = row.split;
  div.dataset.label = row.label; if (row.file) div.dataset.file = row.file;
  const img = document.createElement('img'); img.src = row.img; img.alt = row.name;
  div.appendChild(img);
  const text = document.createElement('div');
  text.innerHTML = '<div class="name"></div><div>labelled <b class="lab"></b></div>' +
    '<div>predicted <span class="pred"></span></div><div class="muted">loss </div>';
  text.querySelector('.name').textContent = row.name;
  text.querySelector('.lab').textContent = row.label;
  text.querySelector('.pred').textContent = row.pred + ' (' + Math.round(row.prob * 100) + '%)';
  text.querySelector('.muted').textContent = row.split + ' · loss ' + row.loss.toFixed(2);
  div.appendChild(text);
  if (DATA.editable && row.file) {
    for (const act of ['keep', 'relabel', 'delete']) {
      const b = document.createElement('button');
      b.textContent = act; b.dataset.act = act;
      b.onclick = () => choose(row.file, act, div.querySelector('select').value);
      div.appendChild(b);
    }
    const sel = document.createElement('select');
    const order = [row.pred, ...DATA.classes.filter(c => c !== row.pred)];
    for (const c of order.filter(c => c !== row.label)) sel.add(new Option('to ' + c, c));
    sel.onchange = () => { if (state[row.file] && state[row.file].action === 'relabel')
      choose(row.file, 'relabel', sel.value); };
    div.appendChild(sel);
  }
  return div;
}
function choose(file, act, to) {
  if (act === 'keep') delete state[file]; else state[file] = {action: act, to: to};
  paint();
}
function paint() {
  for (const div of document.querySelectorAll('.item[data-file]')) {
    const s = state[div.dataset.file];
    div.classList.toggle('relabel', !!s && s.action === 'relabel');
    div.classList.toggle('delete', !!s && s.action === 'delete');
    for (const b of div.querySelectorAll('button'))
      b.classList.toggle('on', (s ? s.action : 'keep') === b.dataset.act);
    if (s && s.action === 'relabel') div.querySelector('select').value = s.to;
  }
  const n = Object.keys(state).length;
  document.getElementById('count').textContent = n + (n === 1 ? ' change' : ' changes');
}
function plan() {
  const actions = Object.entries(state).map(([file, s]) =>
    s.action === 'relabel' ? {file: file, action: 'relabel', to: s.to}
                           : {file: file, action: 'delete'});
  return {deepstart: 'clean-plan', version: 1, root: DATA.root, run: DATA.run,
          classes: DATA.classes, actions: actions};
}
function exportPlan() {
  const text = JSON.stringify(plan(), null, 1);
  document.getElementById('plan').textContent = text;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  a.download = 'clean-plan.json'; document.body.appendChild(a); a.click(); a.remove();
}
function filter() {
  const sp = document.getElementById('split').value, cl = document.getElementById('cls').value;
  for (const div of document.querySelectorAll('#ranked .item'))
    div.hidden = (sp && div.dataset.split !== sp) || (cl && div.dataset.label !== cl);
}
window.deepstartPlan = plan;
const ranked = document.getElementById('ranked');
DATA.order.forEach(r => ranked.appendChild(card(r)));
const groups = document.getElementById('groups');
for (const g of DATA.groups) {
  const box = document.createElement('div'); box.className = 'group';
  const head = document.createElement('div');
  head.textContent = (g.identical ? 'identical pixels' : 'near-identical') +
    (g.labels_disagree ? ' — labels disagree' : '');
  if (g.labels_disagree) head.className = 'warn';
  box.appendChild(head);
  const grid = document.createElement('div'); grid.className = 'grid';
  g.rows.forEach(r => grid.appendChild(card(r)));
  box.appendChild(grid); groups.appendChild(box);
}
document.getElementById('split').onchange = filter;
document.getElementById('cls').onchange = filter;
const ex = document.getElementById('export'); if (ex) ex.onclick = exportPlan;
paint();
"""


def clean_page(
    sus: Suspects,
    *,
    top: int = 200,
    files: list[str | None] | None = None,
    root: str | None = None,
    run: str = "",
    title: str = "",
) -> str:
    """The page (a string of HTML) for the first ``top`` rows of ``sus`` and its groups.

    ``files`` (one per row, relative to ``root``) makes the page editable: each picture with
    a file gets keep / relabel / delete, and the exported plan names files by these paths.
    """
    e = html.escape
    groups = sus.duplicates()[:MAX_GROUPS]
    shown = list(range(min(top, len(sus))))
    needed = sorted({*shown, *(r for g in groups for r in g["rows"])})
    by_row = {r["rank"]: r for r in (sus.row(r) for r in needed)}
    rows = {
        r: {
            **{k: by_row[r][k] for k in ("name", "split", "label", "pred", "prob", "loss")},
            "file": files[r] if files is not None else None,
            "img": data_uri(sus.image(r)),
        }
        for r in needed
    }
    data: dict[str, Any] = {
        "rows": rows,
        "order": shown,
        "groups": groups,
        "classes": list(sus.classes),
        "root": root,
        "run": run,
        "editable": files is not None,
    }
    blob = json.dumps(data).replace("</", "<\\/")  # a "</script>" in a file name stays text
    splits = sorted(set(sus.split))
    split_opts = "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in splits)
    cls_opts = "".join(f'<option value="{e(c)}">{e(c)}</option>' for c in sus.classes)
    if files is not None:
        how = (
            "<p>Choose <b>keep</b>, <b>relabel</b> (to the class chosen below it) or "
            "<b>delete</b> for any picture, then <b>Export plan</b> and run "
            f"<code>deepstart clean {e(run)} --apply clean-plan.json</code>. Nothing changes "
            "before that: relabelled files move to their new class folder, deleted ones to "
            "a <code>-removed</code> folder beside the data, and an undo log is written "
            f"(<code>deepstart clean {e(run)} --undo</code>).</p>"
        )
        button = '<button id="export">Export plan</button> <span id="count"></span>'
    else:
        how = (
            "<p>This data has no files to move (a built-in dataset or an archive): the "
            "names are indices in the dataset's own numbering, also in "
            "<code>suspects.json</code>.</p>"
        )
        button = '<span id="count" hidden></span>'
    more = f" (the first {MAX_GROUPS} of {len(sus.groups)})" if len(sus.groups) > MAX_GROUPS else ""
    made = time.strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>deepstart clean: {e(title)}</title><style>{CSS}{_STYLE}</style></head><body>"
        f"<header><h1>Clean: {e(title)}</h1><p>{len(sus):,} pictures of "
        f"{e(', '.join(splits))} ranked by the loss of their label; made {made}</p></header>"
        f"<main>{how}"
        f'<div class="bar">{button}<label>split <select id="split"><option value="">all'
        f'</option>{split_opts}</select></label><label>labelled <select id="cls">'
        f'<option value="">all</option>{cls_opts}</select></label></div>'
        f"<h2>Highest loss first</h2><p class='muted'>The model's least believed labels: "
        "often mislabelled, ambiguous, or a picture of no class at all.</p>"
        f'<div class="grid" id="ranked"></div>'
        f"<h2>Look-alike pictures{more}</h2><p class='muted'>{len(sus.groups)} "
        f"group{'' if len(sus.groups) == 1 else 's'} of identical or near-identical pictures "
        "(a perceptual hash): keep one of each; one in train and one in valid or test makes "
        "the score read too high.</p>"
        f'<div id="groups"></div><pre id="plan"></pre></main>'
        f'<script type="application/json" id="clean-data">{blob}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
