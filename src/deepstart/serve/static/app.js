// The page of `deepstart serve`: draw or drop an image, send it to POST /api/predict, show
// the top-k bars and the heat map, and fill the model card from GET /api/model.
// Plain browser JavaScript, no library, nothing from another site.
"use strict";

const $ = (id) => document.getElementById(id);
let card = null;
let busy = null; // the prediction in flight (a newer one replaces its result)

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function pct(p) {
  return (100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1) + "%";
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
}

// --- the model card -------------------------------------------------------------------

function cardRow(name, value) {
  if (value === null || value === undefined || value === "") return;
  const tr = el("tr");
  tr.append(el("th", name), el("td", String(value)));
  $("card-table").tBodies[0].append(tr);
}

function showCard(c) {
  $("model-name").textContent = "· " + c.name;
  document.title = "deepstart serve · " + c.name;
  const inp = c.input;
  const size = inp.size.join("×");
  const acc = c.test && typeof c.test.accuracy === "number" ? pct(c.test.accuracy) : null;
  $("model-line").textContent =
    [c.arch, c.dataset && "trained on " + c.dataset, acc && "test accuracy " + acc]
      .filter(Boolean).join(" · ");
  cardRow("architecture", c.arch);
  cardRow("dataset", c.dataset);
  cardRow("classes", `${c.classes.length}: ${c.classes.join(", ")}`);
  cardRow("input", `${size}, ${inp.channels === 1 ? "grey" : "RGB"}, resize by ${inp.resize}`);
  cardRow("normalisation", `mean ${inp.mean.map((v) => v.toFixed(3)).join(", ")} · ` +
    `std ${inp.std.map((v) => v.toFixed(3)).join(", ")}`);
  if (c.params !== null) cardRow("parameters", c.params.toLocaleString("en"));
  if (c.test) {
    cardRow("test accuracy", acc && `${acc} on ${c.test.n} images`);
    if (typeof c.test.loss === "number") cardRow("test loss", c.test.loss.toFixed(4) + " nats");
  }
  cardRow("epochs", c.epochs);
  if (c.test && c.test.per_class) {
    const parts = c.test.per_class.map((r) => `${r.class} ${pct(r.accuracy)}`);
    $("per-class").textContent = "per class: " + parts.join(" · ");
  }
  const charts = $("charts");
  if (c.charts.length) {
    // SVG drawn by the server from metrics.jsonl; its text is escaped there.
    charts.innerHTML = c.charts.join("");
  } else {
    charts.append(el("p", "No training curves: serve the run directory to see them " +
      "(a bundle carries no metrics.jsonl).", "muted"));
  }
  const explain = $("explain");
  for (const m of [...c.explain].reverse()) {
    const o = el("option", m === "gradcam" ? "Grad-CAM" : m);
    o.value = m;
    explain.insertBefore(o, explain.firstChild);
  }
  explain.value = c.explain[0] || "none";
  if (!c.explain.length) explain.disabled = true;
  $("top-k").max = c.classes.length;
  $("top-k").value = Math.min(5, c.classes.length);
  if (c.drawable) {
    $("draw").hidden = false;
    $("draw-size").textContent = size;
  }
}

// --- predicting -----------------------------------------------------------------------

async function predict(blob, name) {
  if (card && blob.size > card.max_upload_bytes) {
    setStatus(`That file is ${(blob.size / 2 ** 20).toFixed(1)} MiB; the limit is ` +
      `${(card.max_upload_bytes / 2 ** 20).toFixed(1)} MiB.`, true);
    return;
  }
  const form = new FormData();
  form.append("file", blob, name);
  form.append("top_k", $("top-k").value || "5");
  form.append("explain", $("explain").value);
  setStatus("predicting…");
  $("result").dataset.state = "busy";
  const mine = {};
  busy = mine;
  let reply, text;
  try {
    reply = await fetch("/api/predict", { method: "POST", body: form });
    text = await reply.text();
  } catch (err) {
    if (busy === mine) fail("the server did not answer: " + err);
    return;
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch (err) {
    body = { detail: text || reply.statusText }; // e.g. a proxy's HTML error page
  }
  if (busy !== mine) return; // a newer request was sent meanwhile
  if (!reply.ok) {
    fail(`${reply.status}: ${typeof body.detail === "string" ? body.detail :
      JSON.stringify(body.detail)}`);
    return;
  }
  showPrediction(body);
}

function fail(message) {
  setStatus(message, true);
  $("predictions").replaceChildren();
  $("warnings").replaceChildren();
  $("heat").hidden = true;
  $("result").dataset.state = "error";
}

function showPrediction(r) {
  setStatus(`It looks like ${r.label} (${pct(r.top[0].probability)}), ` +
    `in ${(1000 * r.seconds).toFixed(0)} ms.`);
  const list = $("predictions");
  list.replaceChildren(...r.top.map((t) => {
    const li = el("li");
    const bar = el("div", undefined, "bar");
    const fill = el("div", undefined, "fill");
    fill.style.width = (100 * t.probability).toFixed(1) + "%";
    bar.append(fill);
    li.append(el("span", t.class, "name"), bar, el("span", pct(t.probability), "pct"));
    li.dataset.class = t.class;
    return li;
  }));
  $("warnings").replaceChildren(...r.warnings.map((w) => el("li", w)));
  if (r.overlay) {
    $("seen").src = r.input;
    $("overlay").src = r.overlay;
    $("overlay-caption").textContent =
      `${r.explain === "gradcam" ? "Grad-CAM" : r.explain} for ${r.label}`;
    $("heat").hidden = false;
  } else {
    $("heat").hidden = true;
  }
  $("result").dataset.label = r.label;
  $("result").dataset.state = "done";
}

// --- drawing --------------------------------------------------------------------------

function setUpCanvas() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const clear = () => {
    ctx.fillStyle = "black";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  let last = null;
  let drawn = false;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width,
      (e.clientY - r.top) * canvas.height / r.height];
  };
  const line = (a, b) => {
    ctx.strokeStyle = "white";
    ctx.lineWidth = canvas.width / 12; // about an MNIST stroke after shrinking
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
  };
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    last = at(e);
    line(last, last);
    drawn = true;
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = at(e);
    line(last, p);
    last = p;
  });
  const lift = () => {
    if (!last) return;
    last = null;
    if ($("live").checked) sendDrawing();
  };
  canvas.addEventListener("pointerup", lift);
  canvas.addEventListener("pointercancel", lift);
  const sendDrawing = () => {
    if (!drawn) {
      setStatus("Draw something first.", true);
      return;
    }
    canvas.toBlob((blob) => predict(blob, "drawing.png"), "image/png");
  };
  $("predict-drawing").addEventListener("click", sendDrawing);
  $("clear").addEventListener("click", () => {
    clear();
    drawn = false;
  });
}

// --- dropping and choosing files ------------------------------------------------------

function setUpUpload() {
  const drop = $("drop");
  const take = (file) => {
    if (!file) return;
    const preview = $("preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    predict(file, file.name);
  };
  $("file").addEventListener("change", (e) => take(e.target.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
}

async function start() {
  setUpCanvas();
  setUpUpload();
  try {
    const reply = await fetch("/api/model");
    card = await reply.json();
    showCard(card);
    document.body.dataset.ready = "1";
  } catch (err) {
    $("model-line").textContent = "could not load the model card: " + err;
  }
}

start();
