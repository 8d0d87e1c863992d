"""`deepstart serve` end to end: the real command on a free loopback port, the page in
headless Chromium, a digit drawn on the canvas with the mouse, and the prediction it shows.

Set ``DEEPSTART_SERVE_SCREENSHOT=docs/img/serve.png`` to keep the screenshot (the one in
docs/serve.md), and ``DEEPSTART_SERVE_BUNDLE=RUN_DIR`` to serve that model instead of the
tiny one trained here (for a prettier screenshot: an MNIST run).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import find_chromium, open_page
from tests.test_serve import multipart, picture, train_tiny_run

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # trains a model and starts a server and a browser: ~30 s
    pytest.mark.skipif(
        find_chromium() is None,
        reason="headless Chromium not found (apt-get install chromium); .ci/run installs it",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    chosen = os.environ.get("DEEPSTART_SERVE_BUNDLE")
    if chosen:
        return Path(chosen)
    tmp = tmp_path_factory.mktemp("serve-browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSTART_CACHE", str(tmp / "cache"))
        return train_tiny_run(tmp / "runs")


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """``python -m deepstart serve BUNDLE --port P`` until the tests of this file end."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepstart", "serve", str(bundle), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"deepstart serve exited:\n{log.read_text()}"
            try:
                if get(port, "/api/model")[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.2)
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_draw_a_digit_and_see_the_prediction(server, tmp_path):
    port, log = server
    assert f"http://127.0.0.1:{port}/" in log.read_text()
    card = json.loads(get(port, "/api/model")[1])
    with open_page(f"http://127.0.0.1:{port}/", height=900) as page:
        page.wait_for("document.body.dataset.ready === '1'")
        assert page.evaluate("document.getElementById('draw').hidden") is False
        assert page.evaluate("document.getElementById('explain').value") == "gradcam"
        assert page.evaluate("document.querySelectorAll('#charts svg').length") == 2
        # A "7": a bar across the top, then a stroke down to the lower left, with the
        # mouse (CDP mouse events; the page listens to the pointer events they make).
        left, top, w, h = page.evaluate(
            "(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()"
        )

        def at(fx: float, fy: float) -> tuple[float, float]:
            return left + fx * w, top + fy * h

        stroke = [at(0.25 + 0.05 * i, 0.22) for i in range(11)]
        stroke += [at(0.75 - 0.025 * i, 0.22 + 0.06 * i) for i in range(1, 11)]
        page.drag(stroke)
        # Lifting the pen sends the drawing; the bars appear.
        page.wait_for("document.getElementById('result').dataset.state === 'done'", 60)
        shown = page.evaluate(
            "Array.from(document.querySelectorAll('#predictions li')).map(li => "
            "[li.dataset.class, li.querySelector('.pct').textContent, "
            "li.querySelector('.fill').style.width])"
        )
        label = page.evaluate("document.getElementById('result').dataset.label")
        assert len(shown) == min(5, len(card["classes"]))
        assert shown[0][0] == label and label in card["classes"]
        assert all(name in card["classes"] for name, _, _ in shown)
        widths = [float(width.rstrip("%")) for _, _, width in shown]
        assert widths == sorted(widths, reverse=True) and widths[0] > 0
        assert page.evaluate("document.getElementById('heat').hidden") is False
        page.wait_for("document.getElementById('overlay').naturalWidth > 0", 10)
        assert page.evaluate("document.getElementById('overlay').naturalWidth") >= 200
        # The page showed what the API says about the canvas's own pixels.
        uri = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
        drawing = base64.b64decode(uri.split(",", 1)[1])
        with Image.open(io.BytesIO(drawing)) as im:
            grey = im.convert("L")
            assert grey.getextrema() == (0, 255)  # white strokes on black
        body, headers = multipart(drawing, top_k=len(shown))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/api/predict", body=body, headers=headers)
        api = json.loads(conn.getresponse().read())
        conn.close()
        assert api["label"] == label
        assert [t["class"] for t in api["top"]] == [name for name, _, _ in shown]
        shot = page.screenshot(tmp_path / "serve.png")
        keep = os.environ.get("DEEPSTART_SERVE_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
        with Image.open(shot) as im:
            assert im.width == 1280 and im.height >= 600
        # An uploaded file goes through the same route.
        photo = tmp_path / "square.jpg"
        picture("square", size=96).save(photo, quality=90)
        page.evaluate("document.getElementById('result').dataset.state = ''")
        page.set_files("#file", [photo])
        page.wait_for("document.getElementById('result').dataset.state === 'done'", 60)
        assert page.evaluate("document.getElementById('preview').hidden") is False
        # A cleared canvas is not sent.
        page.click("#clear")
        page.click("#predict-drawing")
        page.wait_for("document.getElementById('status').classList.contains('error')", 10)
        assert "Draw something first" in page.evaluate(
            "document.getElementById('status').textContent"
        )
        assert page.errors() == []
