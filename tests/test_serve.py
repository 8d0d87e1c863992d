"""`deepstart serve`: the JSON API through FastAPI's TestClient on a tiny shapes run, the
upload limits and refusals, the model card, the schema, and a live server on loopback under
8 concurrent clients."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from deepstart.cli import main
from deepstart.interpret.vision import grad_cam, normalise
from deepstart.serve import create_app
from deepstart.serve.engine import overlay
from deepstart.serve.server import check_host
from deepstart.ship.bundle import load_bundle
from deepstart.ship.predict import read_image

SHAPES = ["circle", "square", "triangle"]
LIMIT = 200_000  # bytes of upload accepted by the test apps


def train_tiny_run(out: Path) -> Path:
    """A 2-epoch shapes run at 16x16 grey (MNIST-like: the page offers a canvas), no report."""
    args = ["train", "--data", "shapes", "--data-opt", "n_train=150", "--data-opt",
            "n_test=30", "--size", "16", "--model", "vgg_small", "--epochs", "2",
            "--lr", "3e-3", "--batch-size", "32", "--out", str(out), "--progress", "none",
            "--no-report"]  # fmt: skip
    assert main(args) == 0
    (run,) = Path(out).iterdir()
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSTART_CACHE", str(tmp / "cache"))
        return train_tiny_run(tmp / "runs")


@pytest.fixture(scope="module")
def client(run_dir):
    return TestClient(create_app(run_dir, max_upload_bytes=LIMIT, concurrency=2))


def picture(kind: str = "circle", size: int = 48, colour: bool = True) -> Image.Image:
    """A bright outline shape on a dark background, larger than the model's 16x16 input."""
    im = Image.new("RGB" if colour else "L", (size, size), (20, 20, 30) if colour else 20)
    d = ImageDraw.Draw(im)
    box = (size // 6, size // 6, size * 5 // 6, size * 5 // 6)
    fill = (250, 240, 200) if colour else 250
    if kind == "circle":
        d.ellipse(box, outline=fill, width=max(2, size // 12))
    else:
        d.rectangle(box, outline=fill, width=max(2, size // 12))
    return im


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def post(client, data: bytes, name: str = "x.png", **form):
    return client.post(
        "/api/predict",
        files={"file": (name, data, "application/octet-stream")},
        data={k: str(v) for k, v in form.items()},
    )


def data_uri_image(uri: str) -> Image.Image:
    head, b64 = uri.split(",", 1)
    assert head == "data:image/png;base64"
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


# --- predictions ------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg")])
def test_predict_matches_deepstart_predict(client, run_dir, tmp_path, fmt, suffix):
    bundle = load_bundle(run_dir)
    for kind in ("circle", "square"):
        # Not square, so that the resize policy (squish, crop or pad) changes the pixels.
        data = encode(
            picture(kind).resize((72, 40)), fmt, **({"quality": 85} if fmt == "JPEG" else {})
        )
        path = tmp_path / f"{kind}{suffix}"
        path.write_bytes(data)
        (want,) = bundle.predict(path, top_k=3, log=lambda msg: None)
        r = post(client, data, path.name)
        assert r.status_code == 200, r.text
        got = r.json()
        # The same decoding and preprocessing as `deepstart predict`: equal probabilities.
        assert got["label"] == want.label
        assert [t["class"] for t in got["top"]] == [c for c, _ in want.top]
        probs = [got["probabilities"][c] for c in SHAPES]
        assert np.allclose(probs, want.probs.numpy(), atol=2e-6)
        assert abs(sum(probs) - 1) < 1e-4
        assert got["explain"] == "none" and got["overlay"] is None and got["input"] is None
        assert got["seconds"] > 0


def test_top_k_is_sorted_and_capped(client):
    data = encode(picture("square"))
    two = post(client, data, top_k=2).json()["top"]
    assert len(two) == 2 and two[0]["probability"] >= two[1]["probability"]
    every = post(client, data, top_k=50).json()["top"]
    assert sorted(t["class"] for t in every) == SHAPES  # capped at the number of classes
    assert [t["probability"] for t in every] == sorted((t["probability"] for t in every),
                                                       reverse=True)  # fmt: skip
    for bad in ("0", "-1", "many"):
        assert post(client, data, top_k=bad).status_code == 422


def test_gradcam_overlay_is_the_heat_map_of_the_top_class(client, run_dir):
    bundle = load_bundle(run_dir)
    im = picture("circle", colour=False)
    data = encode(im)
    got = post(client, data, explain="gradcam").json()
    assert got["explain"] == "gradcam"
    seen = np.asarray(data_uri_image(got["input"]))
    pixels = read_image(io.BytesIO(data), bundle.preprocess)  # (1, 16, 16) uint8
    assert seen.shape == (16, 16) and np.array_equal(seen, pixels[0].numpy())
    top = SHAPES.index(got["label"])
    prep = bundle.preprocess
    heat = grad_cam(bundle.model, normalise(pixels[None], prep.mean, prep.std), top)[0]
    shown = np.asarray(data_uri_image(got["overlay"]).convert("RGB"))
    assert shown.shape == (224, 224, 3)
    assert np.array_equal(shown, overlay(pixels, heat))
    # Saliency is another map of the same image.
    sal = post(client, data, explain="saliency").json()
    assert sal["explain"] == "saliency" and sal["overlay"] != got["overlay"]
    assert post(client, data, explain="lime").status_code == 422


def test_the_page_and_its_files_are_served_with_no_outside_urls(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<canvas id="canvas"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200
        text = r.text
        assert "http://" not in text and "https://" not in text, name  # no CDN, no fonts
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    assert client.get("/redoc").status_code == 404


def test_openapi_schema_lists_the_routes(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {"/api/predict", "/api/model"}
    assert set(paths["/api/predict"]) == {"post"} and set(paths["/api/model"]) == {"get"}
    body = paths["/api/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    ref = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    fields = schema["components"]["schemas"][ref]["properties"]
    assert set(fields) == {"file", "top_k", "explain"}
    assert {"200", "400", "413"} <= set(paths["/api/predict"]["post"]["responses"])


# --- the model card -----------------------------------------------------------------------


def test_model_card_of_a_run_dir(client, run_dir):
    card = client.get("/api/model").json()
    results = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert card["name"] == run_dir.name
    assert card["dataset"] == "shapes" and card["arch"] == "vgg_small"
    assert card["classes"] == SHAPES
    assert card["input"]["size"] == [16, 16] and card["input"]["channels"] == 1
    assert card["drawable"] is True
    assert card["test"]["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert [r["class"] for r in card["test"]["per_class"]] == SHAPES
    assert card["epochs"] == 2 and [r["epoch"] for r in card["curves"]] == [1, 2]
    assert card["curves"][1]["valid_loss"] == rows[1]["valid_loss"]
    assert len(card["charts"]) == 2
    for svg in card["charts"]:
        assert svg.startswith("<svg") and svg.endswith("</svg>") and "<polyline" in svg
    assert "loss" in card["charts"][0] and "accuracy" in card["charts"][1]
    assert card["explain"] == ["gradcam", "saliency"]
    assert card["params"] == sum(p.numel() for p in load_bundle(run_dir).model.parameters())
    assert card["max_upload_bytes"] == LIMIT


def test_model_card_of_a_zip_bundle_has_no_curves(run_dir, tmp_path):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "m.zip")]) == 0
    card = TestClient(create_app(tmp_path / "m.zip")).get("/api/model").json()
    meta = json.loads((run_dir / "model.json").read_text())
    assert card["name"] == "m.zip" and card["classes"] == SHAPES
    assert card["test"]["accuracy"] == pytest.approx(meta["test"]["accuracy"])
    assert card["curves"] == [] and card["charts"] == [] and card["epochs"] is None


@pytest.mark.slow  # the ONNX export takes 10-20 s
def test_an_onnx_model_is_served_without_heat_maps(run_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra (in the test extra)")
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(run_dir), "--onnx", str(onnx)]) == 0
    client = TestClient(create_app(onnx))
    card = client.get("/api/model").json()
    assert card["explain"] == [] and card["params"] is None and card["classes"] == SHAPES
    data = encode(picture("circle"))
    got = post(client, data).json()
    want = post(TestClient(create_app(run_dir)), data).json()
    assert got["label"] == want["label"]
    assert np.allclose(
        [got["probabilities"][c] for c in SHAPES],
        [want["probabilities"][c] for c in SHAPES],
        atol=1e-4,
    )
    r = post(client, data, explain="gradcam")
    assert r.status_code == 400 and "cannot explain" in r.json()["detail"]


def test_a_model_whose_last_map_is_one_pixel_is_not_offered_grad_cam():
    from types import SimpleNamespace

    from deepstart.data.dataset import Preprocess
    from deepstart.models.registry import create_model
    from deepstart.serve.engine import Engine

    model = create_model("fast_mnist", widths=[8, 8, 8, 8], space_to_depth=2).eval()
    for side, offered in ((28, ["saliency"]), (56, ["gradcam", "saliency"])):  # 1x1, 3x3 maps
        prep = Preprocess(size=(side, side), channels=1, mean=(0.0,), std=(1.0,))
        bundle = SimpleNamespace(classes=[str(d) for d in range(10)], preprocess=prep, model=model)
        assert Engine(bundle).explain == offered


# --- bad input --------------------------------------------------------------------------


def test_uploads_over_the_limit_are_refused_while_reading(client):
    big = encode(picture()) + b"\0" * LIMIT  # a PNG with junk after it: over the limit
    r = post(client, big)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert "195 KiB" in r.json()["detail"] or "200,000 bytes" in r.json()["detail"]

    # No Content-Length to trust: a chunked body is counted as it arrives.
    boundary = "deepstartlimit"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"'
            "\r\nContent-Type: image/png\r\n\r\n").encode()  # fmt: skip

    def chunks():
        yield head
        for _ in range(2 * LIMIT // 4096):
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/api/predict",
        content=chunks(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    # Just under the limit is fine (the multipart framing does not count against the file).
    small = encode(picture())
    assert post(client, small + b"\0" * (LIMIT - len(small))).status_code == 200


def _through_limit(body_chunks, max_bytes: int, headers=()) -> tuple[list, list, int]:
    """Run BodyLimit over a stream of body chunks; return (what the app received, what
    was sent back, how many chunks the middleware read)."""
    import asyncio

    from deepstart.serve.limit import BodyLimit

    seen, sent, read = [], [], 0
    chunks = iter(body_chunks)

    async def receive():
        nonlocal read
        body = next(chunks, None)
        if body is None:
            return {"type": "http.disconnect"}
        read += 1
        return {"type": "http.request", "body": body, "more_body": body != b""}  # b"": the end

    async def app(scope, receive, send):
        message = await receive()
        seen.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": list(headers)}
    asyncio.run(BodyLimit(app, max_bytes)(scope, receive, send))
    return seen, sent, read


def test_body_limit_counts_the_bytes_that_arrive():
    from deepstart.serve.limit import DRAIN_BYTES

    def stream(n_chunks, size=1000, last=True):
        for i in range(n_chunks):
            yield b"x" * size if not (last and i == n_chunks - 1) else b""

    # Within the limit: the app gets the whole body once, joined.
    seen, sent, _ = _through_limit([b"ab", b"cd", b""], 10, headers=[(b"content-length", b"4")])
    assert seen == [b"abcd"] and sent[0]["status"] == 200
    # A Content-Length that lies (says 4) does not get a larger body through.
    seen, sent, _ = _through_limit(stream(20), 5000, headers=[(b"content-length", b"4")])
    assert seen == [] and sent[0]["status"] == 413
    # An endless body: refused, and reading stops DRAIN_BYTES past the limit.
    endless = (b"x" * 65536 for _ in range(10**6))
    seen, sent, read = _through_limit(endless, 100_000)
    assert seen == [] and sent[0]["status"] == 413
    assert read * 65536 <= 100_000 + DRAIN_BYTES + 2 * 65536
    assert json.loads(sent[1]["body"])["detail"].startswith("upload too large")
    # Announced too large and waiting for 100 Continue: answered before reading anything.
    head = [(b"content-length", b"999999"), (b"expect", b"100-continue")]
    seen, sent, read = _through_limit(stream(5), 1000, headers=head)
    assert (seen, read, sent[0]["status"]) == ([], 0, 413)


def test_non_images_and_broken_images_get_400_with_a_message(client):
    png = encode(picture())
    cases = {
        "text": (b"hello, I am not an image\n" * 10, "not an image"),
        "empty": (b"", "empty upload"),
        "truncated png": (png[: len(png) // 2], "broken image"),
        "bad jpeg": (encode(picture(), "JPEG")[:300] + b"\xff\xd9", "broken image"),
    }
    for name, (data, message) in cases.items():
        r = post(client, data, "upload.bin")
        assert r.status_code == 400, (name, r.text)
        assert message in r.json()["detail"], (name, r.json())
    # Missing file field: FastAPI's own validation error.
    assert client.post("/api/predict", data={"top_k": "3"}).status_code == 422
    # And the server still answers.
    assert post(client, png).status_code == 200


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height grey pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused(client, monkeypatch):
    r = post(client, _png_claiming(100_000, 100_000))  # over twice the limit: Pillow's error
    assert r.status_code == 413
    assert "decompression bomb" in r.json()["detail"]
    # Between the limit and twice it Pillow only warns; the server refuses all the same.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    r = post(client, encode(Image.new("L", (12, 12))))  # 144 pixels
    assert r.status_code == 413
    assert "decompression bomb" in r.json()["detail"] and "144 pixels" in r.json()["detail"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 144)
    assert post(client, encode(Image.new("L", (12, 12)))).status_code == 200


# --- serving ----------------------------------------------------------------------------


def test_check_host_warns_off_loopback():
    for quiet in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert check_host(quiet) is None, quiet
    assert "every network interface" in check_host("0.0.0.0")
    assert "every network interface" in check_host("::")
    assert check_host("192.168.1.20") is not None


def test_cli_serve_maps_flags_and_warns_on_0_0_0_0(run_dir, monkeypatch, capsys):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    args = ["serve", str(run_dir), "--host", "0.0.0.0", "--port", "8123", "--threads", "2"]
    assert main([*args, "--max-upload-mb", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "warning: binding to 0.0.0.0" in out and "http://0.0.0.0:8123/" in out
    assert (seen["host"], seen["port"], seen["threads"]) == ("0.0.0.0", 8123, 2)
    assert seen["app"].state.card["max_upload_bytes"] == 2**19
    assert main(["serve", str(run_dir), "--max-upload-mb", "0"]) == 2
    assert main(["serve", str(run_dir / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@contextlib.contextmanager
def live_server(app):
    """``app`` under uvicorn in a thread, on a free loopback port; yields the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def multipart(data: bytes, boundary: str = "deepstartload", **fields) -> tuple[bytes, dict]:
    """A multipart/form-data body by hand: the image as ``file``, plus text ``fields``."""
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"'
            f"\r\nContent-Type: image/png\r\n\r\n").encode() + data + b"\r\n"  # fmt: skip
    for name, value in fields.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                 f"{value}\r\n").encode()  # fmt: skip
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_live_server_under_concurrent_clients(run_dir):
    """200 requests from 8 keep-alive clients on loopback: every good image gets the same
    answer as alone, every broken one a 400, and nothing else happens."""
    good, bad = encode(picture("circle")), encode(picture("circle"))[:100]
    app = create_app(run_dir, max_upload_bytes=LIMIT)
    with live_server(app) as port:

        def call(conn: http.client.HTTPConnection, data: bytes) -> tuple[int, dict]:
            body, headers = multipart(data)
            conn.request("POST", "/api/predict", body=body, headers=headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read())

        alone = call(http.client.HTTPConnection("127.0.0.1", port, timeout=30), good)[1]

        def client(i: int) -> list[tuple[int, dict]]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                return [call(conn, bad if (i + 8 * j) % 10 == 0 else good) for j in range(25)]
            finally:
                conn.close()

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            replies = [r for rs in pool.map(client, range(8)) for r in rs]
        assert time.monotonic() - start < 120  # a bound, so a hang fails instead of waiting
        # Too large, sent whole with its Content-Length, as browsers do: the client reads a
        # 413 (not a reset connection), and the server goes on serving.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body, headers = multipart(good + b"\0" * 3 * LIMIT)
        conn.request("POST", "/api/predict", body=body, headers=headers)
        r = conn.getresponse()
        assert r.status == 413 and "too large" in json.loads(r.read())["detail"]
        conn.close()
        assert call(http.client.HTTPConnection("127.0.0.1", port, timeout=30), good)[0] == 200
    assert len(replies) == 200
    statuses = [s for s, _ in replies]
    assert statuses.count(400) == 20 and statuses.count(200) == 180
    for status, body in replies:
        if status == 200:
            assert body["probabilities"] == alone["probabilities"]
        else:
            assert "broken image" in body["detail"]
