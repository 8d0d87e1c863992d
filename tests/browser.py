"""Headless Chromium for tests: load a page, check its images, save a full-page screenshot.

Talks the Chrome DevTools Protocol over ``--remote-debugging-pipe``, so it needs only the
standard library and a ``chromium`` binary (Debian: ``apt-get install chromium``), not a
browser-driver package. Chromium reads JSON commands from fd 3 and writes replies and
events to fd 4, each message terminated by a NUL byte.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Without these Chromium phones Google (sync, component updates, QUIC probes) and stalls
# on machines whose network reaches only the package registries; root needs --no-sandbox.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)

# Runs in the page after the load event, when every <img> has either loaded or failed.
_CHECK_JS = """(() => {
  const imgs = Array.from(document.images);
  const d = document.documentElement, b = document.body;
  return {
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0)
                .map(i => i.getAttribute('src') || i.currentSrc || ''),
    // Content height, not scrollHeight: that never drops below the viewport's 800 px.
    height: Math.max(d.offsetHeight, b ? b.scrollHeight : 0),
    title: document.title,
  };
})()"""


@dataclass(frozen=True)
class PageCheck:
    """What headless Chromium saw after the page's load event.

    Attributes:
        url: The URL that was loaded.
        images: Number of ``<img>`` elements in the document.
        broken: ``src`` of each image that did not decode (truncated to 80 characters).
        height: Document content height in CSS pixels (may be under the 800 px viewport).
        title: The document title.
        errors: Console errors, uncaught exceptions and failed resource loads.
        screenshot: Path of the full-page PNG (``width`` pixels wide, ``height`` tall).
    """

    url: str
    images: int
    broken: list[str]
    height: int
    title: str
    errors: list[str]
    screenshot: Path


def find_chromium() -> str | None:
    """Path of a Chromium binary: ``$CHROMIUM`` if set, else the first one on ``PATH``."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render_page(
    path_or_url: str | Path, screenshot: Path, *, width: int = 1280, timeout: float = 60
) -> PageCheck:
    """Load a page in a fresh headless Chromium, check its images and screenshot it.

    Chromium is killed and its temporary profile removed however this returns.

    Args:
        path_or_url: A local file (``report.html``) or a URL (``file:``, ``http:``, ...).
        screenshot: Where to write the full-page PNG.
        width: Viewport width in CSS pixels (= screenshot width, device scale 1).
        timeout: Seconds for the whole start-load-check-screenshot, after which
            ``TimeoutError`` is raised.

    Returns:
        A ``PageCheck``.

    Example:
        >>> page = render_page(run_dir / "report.html", tmp_path / "shot.png")
        >>> assert page.images and not page.broken
    """
    text = str(path_or_url)
    url = text if "://" in text or text.startswith(("data:", "about:")) else None
    url = url or Path(text).resolve().as_uri()
    with _chromium(timeout) as (cdp, stderr_log):
        try:
            sid = _load(cdp, url, width, 800)
            return _check(cdp, sid, url, Path(screenshot), width)
        except (TimeoutError, ConnectionError, RuntimeError) as e:
            tail = stderr_log.read_text(errors="replace")[-2000:]
            raise type(e)(f"{e} (loading {url})\n--- chromium stderr ---\n{tail}") from e


@contextlib.contextmanager
def _chromium(timeout: float):
    """Start headless Chromium with its DevTools pipe; yield ``(cdp, stderr_log)``.

    Chromium is asked to quit (then killed) and its temporary profile removed on exit;
    every CDP read respects one deadline of ``timeout`` seconds from the start.
    """
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("headless Chromium not found (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="deepstart-chromium-"))
    fds: list[int] = []
    proc = None
    try:
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        fds += [cmd_r, cmd_w, out_r, out_w]
        argv = [chromium, *_FLAGS, f"--user-data-dir={tmp / 'profile'}", "about:blank"]
        with open(tmp / "stderr.log", "wb") as log:
            # The pipes arrive as stdin/stdout and the shell moves them to fds 3 and 4:
            # no preexec_fn (unsafe with torch's threads), and dash takes only 1-digit fds.
            proc = subprocess.Popen(
                ["/bin/sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2', "sh", *argv],
                stdin=cmd_r,
                stdout=out_w,
                stderr=log,
                start_new_session=True,  # one process group: kill renderers with it
            )
        for fd in (cmd_r, out_w):  # only Chromium holds these now, so its exit is EOF
            os.close(fd)
            fds.remove(fd)
        yield _Cdp(cmd_w, out_r, time.monotonic() + timeout), tmp / "stderr.log"
    finally:
        if proc is not None:
            _stop(proc, cmd_w)
        for fd in fds:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _load(cdp: _Cdp, url: str, width: int, height: int) -> str:
    """Open a tab at ``width`` x ``height``, navigate to ``url``, wait for its load event;
    return the tab's CDP session id."""
    target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
    sid = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        cdp.call(f"{domain}.enable", sid)
    cdp.call("Page.setLifecycleEventsEnabled", sid, enabled=True)
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        sid,
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    nav = cdp.call("Page.navigate", sid, url=url)
    if nav.get("errorText"):
        raise RuntimeError(f"navigation to {url} failed: {nav['errorText']}")
    # The load event of *this* navigation (matched by loaderId), not about:blank's.
    cdp.wait_for(
        lambda m: (
            m.get("method") == "Page.lifecycleEvent"
            and m["params"]["name"] == "load"
            and m["params"]["loaderId"] == nav["loaderId"]
        )
    )
    return sid


def _check(cdp: _Cdp, sid: str, url: str, screenshot: Path, width: int) -> PageCheck:
    found = cdp.call("Runtime.evaluate", sid, expression=_CHECK_JS, returnByValue=True)
    if "exceptionDetails" in found:
        raise RuntimeError(f"page check failed: {found['exceptionDetails']}")
    page = found["result"]["value"]
    clip = {"x": 0, "y": 0, "width": width, "height": max(page["height"], 1), "scale": 1}
    shot = cdp.call(
        "Page.captureScreenshot", sid, format="png", clip=clip, captureBeyondViewport=True
    )
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    return PageCheck(
        url=url,
        images=page["images"],
        broken=[s if len(s) <= 80 else s[:77] + "..." for s in page["broken"]],
        height=page["height"],
        title=page["title"],
        errors=[e for e in map(_error_text, cdp.events) if e],
        screenshot=screenshot,
    )


def _stop(proc: subprocess.Popen, cmd_w: int) -> None:
    """Ask Chromium to quit, so it reaps its own children, then kill whatever is left."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # hung or gone: kill
        os.write(cmd_w, b'{"id": 0, "method": "Browser.close"}\0')
        proc.wait(timeout=3)
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _error_text(msg: dict) -> str | None:
    """The message of a console error, uncaught exception or failed load event, else None."""
    method, params = msg.get("method"), msg.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return details.get("exception", {}).get("description") or details.get("text")
    if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
        return " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
    if method == "Log.entryAdded" and params["entry"]["level"] == "error":
        entry = params["entry"]
        return f"{entry['text']} {entry.get('url', '')}".strip()
    return None


class _Cdp:
    """Blocking CDP client over two pipe fds; every read respects one deadline."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float) -> None:
        self._w, self._r, self._deadline = write_fd, read_fd, deadline
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []  # every event seen, in order

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        # Commands are < 1 KB, far below the pipe buffer, so this write never blocks.
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def wait_for(self, match: Callable[[dict], bool]) -> dict:
        for event in self.events:
            if match(event):
                return event
        while not match(event := self._read()):
            pass
        return event

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            left = self._deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed the DevTools pipe (crashed?)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg


# --- driving a live page: evaluate JS, mouse input, wait for the page, screenshot ---------


class LivePage:
    """A page open in headless Chromium, for tests that act on it (see :func:`open_page`).

    Attributes:
        url: The URL that was loaded.
    """

    def __init__(self, cdp: _Cdp, session: str, url: str, width: int) -> None:
        self._cdp, self._sid, self.url, self._width = cdp, session, url, width

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (a promise is awaited)."""
        found = self._cdp.call(
            "Runtime.evaluate",
            self._sid,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in found:
            raise RuntimeError(f"{expression!r} threw: {found['exceptionDetails']}")
        return found["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, interval: float = 0.1):
        """Poll ``expression`` until it is truthy and return its value.

        Raises:
            TimeoutError: still falsy after ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > end:
                raise TimeoutError(f"{expression!r} still {value!r} after {timeout} s")
            time.sleep(interval)

    def center(self, selector: str) -> tuple[float, float]:
        """Viewport coordinates (CSS pixels) of the middle of the first match of a selector."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        return float(box[0]), float(box[1])

    def mouse(self, kind: str, x: float, y: float, *, pressed: bool = False) -> None:
        """One ``Input.dispatchMouseEvent``: kind is "mousePressed", "mouseMoved" or
        "mouseReleased"; Chromium derives the pointer events from it as for a real mouse."""
        down = kind == "mousePressed" or (kind == "mouseMoved" and pressed)
        self._cdp.call(
            "Input.dispatchMouseEvent",
            self._sid,
            type=kind,
            x=x,
            y=y,
            button="left" if kind != "mouseMoved" or pressed else "none",
            buttons=1 if down else 0,
            clickCount=1 if kind != "mouseMoved" else 0,
        )

    def drag(self, points: list[tuple[float, float]]) -> None:
        """Press the left button at the first point, move through the rest, release."""
        self.mouse("mousePressed", *points[0])
        for x, y in points[1:]:
            self.mouse("mouseMoved", x, y, pressed=True)
        self.mouse("mouseReleased", *points[-1])

    def click(self, selector: str) -> None:
        """A left click in the middle of the first element matching ``selector``."""
        x, y = self.center(selector)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an ``<input type=file>`` as a user would (fires its change event)."""
        root = self._cdp.call("DOM.getDocument", self._sid)["root"]["nodeId"]
        node = self._cdp.call("DOM.querySelector", self._sid, nodeId=root, selector=selector)
        self._cdp.call(
            "DOM.setFileInputFiles",
            self._sid,
            nodeId=node["nodeId"],
            files=[str(Path(p).resolve()) for p in paths],
        )

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        return [e for e in map(_error_text, self._cdp.events) if e]

    def screenshot(self, path: Path) -> Path:
        """A full-page PNG, ``width`` pixels wide."""
        height = self.evaluate(
            "Math.max(document.documentElement.offsetHeight, document.body.scrollHeight)"
        )
        clip = {"x": 0, "y": 0, "width": self._width, "height": max(height, 1), "scale": 1}
        shot = self._cdp.call(
            "Page.captureScreenshot", self._sid, format="png", clip=clip, captureBeyondViewport=True
        )
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)


@contextlib.contextmanager
def open_page(url: str, *, width: int = 1280, height: int = 800, timeout: float = 90):
    """Load ``url`` in a fresh headless Chromium and yield a :class:`LivePage` to act on.

    The page's load event has fired when the block starts. Chromium is killed and its
    profile removed when the block ends; every CDP read respects one deadline of
    ``timeout`` seconds from the start.

    Example:
        >>> with open_page("http://127.0.0.1:8000/") as page:
        ...     page.drag([(10, 10), (50, 50)])
        ...     page.wait_for("document.querySelector('#result li')")
    """
    with _chromium(timeout) as (cdp, _):
        sid = _load(cdp, url, width, height)
        yield LivePage(cdp, sid, url, width)
