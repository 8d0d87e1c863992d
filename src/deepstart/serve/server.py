"""Running the web app: ``deepstart serve BUNDLE`` -> uvicorn on 127.0.0.1:8000.

Threads: uvicorn answers HTTP on one event loop; each prediction runs in a worker thread.
PyTorch would give every forward pass all cores, so that two requests at once fight over
them; instead each pass gets ``threads`` cores (default 1) and ``cores // threads`` requests
run at once, the rest queue (:class:`deepstart.serve.engine.Engine`). For one big model and
one user, ``--threads`` = the number of cores gives the lowest latency.

Example:
    >>> run("runs/20260101-120000-shapes-vgg_small", port=8000)  # blocks; Ctrl-C stops
"""

from __future__ import annotations

import ipaddress
import os
import warnings
from collections.abc import Callable

from deepstart.device import resolve_device
from deepstart.errors import DeepstartError
from deepstart.serve.limit import MAX_UPLOAD_BYTES


def check_host(host: str) -> str | None:
    """A warning for a bind address that other machines can reach, else None.

    Example:
        >>> check_host("127.0.0.1") is None, check_host("0.0.0.0") is None
        (True, False)
    """
    if host == "localhost":
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"binding to {host!r}: other machines may reach this server; it has no login"
    if ip.is_loopback:
        return None
    if ip.is_unspecified:
        return (
            f"binding to {host} listens on every network interface: anyone who can reach this "
            "machine can use the model (no login, no TLS); use 127.0.0.1 unless you mean it"
        )
    return f"binding to {host}: other machines on that network can reach this server"


def run(
    bundle_path: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    threads: int | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    log: Callable[[str], None] = print,
) -> None:
    """Load the bundle and serve the app until Ctrl-C.

    Args:
        bundle_path: a ``.zip`` or folder bundle, a run directory or an ``.onnx`` file.
        host: the address to bind; 127.0.0.1 (this machine only) by default.
        port: the TCP port.
        device: where the model runs ("cpu", "cuda", "mps" or "auto").
        threads: PyTorch threads per prediction (default 1); ``cores // threads``
            predictions run at once.
        max_upload_bytes: the largest image file accepted (413 above it).
        log: where the start-up lines go.

    Raises:
        DeepstartError: FastAPI or uvicorn is not installed, or a bad setting.
        ConfigError: a device this machine lacks (before anything is loaded).
        BundleError: the bundle cannot be loaded.
    """
    device = str(resolve_device(device))
    try:
        import uvicorn
    except ImportError:
        raise DeepstartError(
            "deepstart serve needs FastAPI and uvicorn: pip install 'deepstart[serve]'"
        ) from None
    import torch
    from PIL import Image

    from deepstart.serve.app import create_app

    if not 0 <= port <= 65535:
        raise DeepstartError(f"port must be 0-65535, got {port}")
    threads = threads or 1
    if threads < 1:
        raise DeepstartError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    # In a server every bomb is an error, from any thread; the upload path also checks the
    # pixel count itself (engine.check_pixels), as this filter is process-wide.
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    app = create_app(
        bundle_path,
        device=device,
        max_upload_bytes=max_upload_bytes,
        concurrency=max(1, (os.cpu_count() or 1) // threads),
    )
    warning = check_host(host)
    if warning:
        log(f"warning: {warning}")
    card = app.state.card
    shown = f"[{host}]" if ":" in host else host
    log(
        f"serving {card['name']} ({card['arch']}, {len(card['classes'])} classes) at "
        f"http://{shown}:{port}/ ; API schema at /openapi.json ; Ctrl-C stops"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
