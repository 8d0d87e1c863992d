"""``deepstart serve``: a local web app to try a model in the browser, with a JSON API.

Needs the ``serve`` extra (``pip install 'deepstart[serve]'``: FastAPI, uvicorn,
python-multipart). The parts:

- :mod:`~deepstart.serve.app`: ``create_app(bundle_path)``, the FastAPI app (page + API).
- :mod:`~deepstart.serve.engine`: uploaded bytes -> pixels -> probabilities and heat maps.
- :mod:`~deepstart.serve.card`: the model card and its training-curve SVGs.
- :mod:`~deepstart.serve.limit`: the upload size limit, counted as the body arrives.
- :mod:`~deepstart.serve.server`: ``run(...)`` under uvicorn, bound to 127.0.0.1.

Example:
    >>> from deepstart.serve import create_app
    >>> app = create_app("shapes.zip")  # then: uvicorn, or fastapi.testclient.TestClient(app)
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "run"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`deepstart.serve.app.create_app` (imported on first use: FastAPI is an
    optional dependency)."""
    from deepstart.serve.app import create_app as create

    return create(*args, **kwargs)


def run(*args: Any, **kwargs: Any) -> None:
    """See :func:`deepstart.serve.server.run`."""
    from deepstart.serve.server import run as serve

    serve(*args, **kwargs)
