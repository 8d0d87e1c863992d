"""Latency and throughput of ``deepstart serve`` under concurrent clients, on loopback only.

    python bench/serve.py RUN_DIR_OR_BUNDLE [--requests 200] [--clients 8]
        [--explain none,gradcam] [--append docs/benchmarks.md]

Starts the real command (``python -m deepstart serve BUNDLE`` on a free 127.0.0.1 port, its
default threads), sends a few warm-up requests, then for each ``--explain`` mode sends
``--requests`` uploads of one 280x280 PNG drawing (what the page's canvas sends) from
``--clients`` threads, each over its own keep-alive connection. Every request has a 30 s
timeout and the whole run a ``--deadline``; the server is stopped at the end, whatever
happens. Prints latency percentiles, requests/s, errors, the machine and its load average
(other jobs share it: the numbers are only as quiet as the machine), and with ``--append``
adds them as a markdown section to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

HOST = "127.0.0.1"  # never anything but loopback


def drawing() -> bytes:
    """A white "3" on black at the page canvas's 280x280, as a PNG."""
    im = Image.new("L", (280, 280), 0)
    d = ImageDraw.Draw(im)
    d.arc((80, 40, 200, 140), 200, 90, fill=255, width=22)
    d.arc((80, 130, 200, 240), 270, 160, fill=255, width=22)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def multipart(data: bytes, explain: str, boundary: str = "deepstartbench") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="explain"\r\n\r\n'
        f"{explain}\r\n".encode(),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)


def start_server(bundle: str, log: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:
        argv = [sys.executable, "-m", "deepstart", "serve", bundle, "--host", HOST]
        proc = subprocess.Popen(
            [*argv, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"deepstart serve exited:\n{log.read_text()}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", "/api/model")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("deepstart serve did not answer within 120 s")


def load(port: int, body: bytes, requests: int, clients: int, deadline: float) -> dict:
    """``requests`` POSTs from ``clients`` threads; latencies in seconds and error count."""
    headers = {"Content-Type": "multipart/form-data; boundary=deepstartbench"}
    share = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(n: int) -> tuple[list[float], list[str]]:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        times, errors = [], []
        try:
            for _ in range(n):
                if time.monotonic() > deadline:
                    errors.append("deadline")
                    continue
                t = time.perf_counter()
                try:
                    conn.request("POST", "/api/predict", body=body, headers=headers)
                    r = conn.getresponse()
                    payload = r.read()
                    if r.status != 200 or "label" not in json.loads(payload):
                        errors.append(f"{r.status}: {payload[:100]!r}")
                except (OSError, http.client.HTTPException, ValueError) as e:
                    errors.append(repr(e))
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=30)
                times.append(time.perf_counter() - t)
        finally:
            conn.close()
        return times, errors

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, share))
    wall = time.perf_counter() - start
    times = sorted(t for ts, _ in results for t in ts)
    errors = [e for _, es in results for e in es]
    return {"times": times, "errors": errors, "wall": wall}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    i = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle", help="a run directory, bundle (.zip or folder) or .onnx file")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--explain", default="none,gradcam", help="modes, comma-separated")
    p.add_argument("--deadline", type=float, default=600, help="seconds for everything")
    p.add_argument("--append", type=Path, help="add the results to this markdown file")
    a = p.parse_args()
    deadline = time.monotonic() + a.deadline
    body_png = drawing()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"deepstart-serve-bench-{os.getpid()}.log"
    proc, port = start_server(a.bundle, log)
    rows = []
    try:
        for mode in a.explain.split(","):
            body = multipart(body_png, mode)
            load(port, body, 2 * a.clients, a.clients, deadline)  # warm-up
            loadavg = os.getloadavg()[0]
            res = load(port, body, a.requests, a.clients, deadline)
            t = [x * 1000 for x in res["times"]]
            rows.append({
                "explain": mode,
                "n": len(t),
                "errors": len(res["errors"]),
                "p50": percentile(t, 50),
                "p90": percentile(t, 90),
                "p99": percentile(t, 99),
                "max": t[-1],
                "mean": statistics.fmean(t),
                "rps": len(t) / res["wall"],
                "load": loadavg,
            })  # fmt: skip
            if res["errors"]:
                print(f"{mode}: {len(res['errors'])} errors, first: {res['errors'][0]}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    import torch

    card_name = Path(a.bundle).name
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, torch {torch.__version__}")  # fmt: skip
    about = (
        f"`python bench/serve.py {card_name} --requests {a.requests} --clients {a.clients}`: "
        f"the real `deepstart serve` (default threads) on 127.0.0.1, {a.clients} keep-alive "
        f"clients sending {a.requests} uploads of a 280×280 PNG drawing each way, after a "
        f"warm-up. Machine: {machine}. `uptime` before: `{uptime}`; after: `{uptime_after}` "
        "(other developers' jobs share the cores, so these times are noisy)."
    )
    lines = [
        f"## deepstart serve under load — {datetime.date.today().isoformat()}",
        "",
        textwrap.fill(about, width=95, break_long_words=False, break_on_hyphens=False),
        "",
        "| explain | requests | errors | p50 | p90 | p99 | max | requests/s | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['explain']} | {r['n']} | {r['errors']} | {r['p50']:.0f} ms | "
            f"{r['p90']:.0f} ms | {r['p99']:.0f} ms | {r['max']:.0f} ms | {r['rps']:.1f} | "
            f"{r['load']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.append:
        with open(a.append, "a") as f:
            f.write("\n" + text)
        print(f"appended to {a.append}")


if __name__ == "__main__":
    main()
