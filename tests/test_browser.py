"""The headless-Chromium harness itself: broken images, page height, screenshot, cleanup."""

import base64
import io
import tempfile

import pytest
from PIL import Image

from tests.browser import find_chromium, render_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        find_chromium() is None,
        reason="headless Chromium not found (apt-get install chromium); .ci/run installs it",
    ),
]

RED = (255, 0, 0)


def png(color=RED, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(color=RED) -> str:
    return "data:image/png;base64," + base64.b64encode(png(color)).decode()


def page(tmp_path, body: str, name: str = "page.html"):
    path = tmp_path / name
    path.write_text(f"<!doctype html><title>harness</title><body style='margin:0'>{body}")
    return path


def test_reports_exactly_the_broken_image(tmp_path):
    (tmp_path / "beside.png").write_bytes(png((0, 0, 255)))
    html = page(
        tmp_path,
        f'<img src="{data_uri()}"><img src="beside.png"><img src="missing.png">',
    )
    check = render_page(html, tmp_path / "shot.png")
    assert check.images == 3
    assert check.broken == ["missing.png"]
    assert check.title == "harness"
    assert any("missing.png" in e for e in check.errors)


def test_good_images_are_not_broken(tmp_path):
    (tmp_path / "beside.png").write_bytes(png())
    html = page(tmp_path, f'<img src="{data_uri()}"><img src="beside.png">')
    check = render_page(html, tmp_path / "shot.png")
    assert (check.images, check.broken, check.errors) == (2, [], [])


def test_broken_data_uri_is_reported_truncated(tmp_path):
    bad = "data:image/png;base64," + "A" * 500  # decodes to bytes that are no image
    check = render_page(page(tmp_path, f'<img src="{bad}">'), tmp_path / "shot.png")
    assert len(check.broken) == 1
    assert check.broken[0].startswith("data:image/png") and len(check.broken[0]) == 80


def test_page_height_grows_with_content(tmp_path):
    short = render_page(page(tmp_path, "<p>hello</p>", "short.html"), tmp_path / "a.png")
    tall = page(tmp_path, "<p>hello</p><div style='height:3000px'></div>", "tall.html")
    check = render_page(tall, tmp_path / "b.png")
    assert short.height < 1000
    assert check.height >= 3000 + short.height // 2


def test_screenshot_is_full_page_png_of_the_width(tmp_path):
    html = page(tmp_path, f"<img src='{data_uri()}'><div style='height:2000px'></div>")
    check = render_page(html, tmp_path / "shot.png", width=640)
    with Image.open(check.screenshot) as shot:
        assert shot.format == "PNG"
        assert shot.size == (640, check.height)
        # The red image really was painted at the top-left corner; white page below it.
        assert shot.convert("RGB").getpixel((10, 10)) == RED
        assert shot.convert("RGB").getpixel((10, check.height - 10)) == (255, 255, 255)


def test_timeout_raises_and_cleans_up(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the profile goes
    with pytest.raises(TimeoutError, match="did not answer"):
        render_page(page(tmp_path, "<p>hi</p>"), tmp_path / "shot.png", timeout=0.01)
    assert list(scratch.iterdir()) == []  # temporary profile removed
