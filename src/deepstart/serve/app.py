"""The web app of ``deepstart serve``: one page to try a model, and its JSON API.

``create_app`` builds a FastAPI app around one bundle (a ``.zip``, a bundle or run directory,
or an ``.onnx`` file). It needs no socket: tests drive it with FastAPI's ``TestClient``, and
:func:`deepstart.serve.server.run` hands it to uvicorn.

Routes:
    ``GET /``: the page (static HTML/JS/CSS shipped in the package: no CDN, works offline).
    ``GET /api/model``: the model card (:func:`deepstart.serve.card.model_card`).
    ``POST /api/predict``: a multipart image upload (field ``file``; optional ``top_k`` and
    ``explain`` = gradcam | saliency | none) -> top-k classes, all probabilities and, when
    asked, a heat map of the top class as a PNG data URI.
    ``GET /openapi.json``: the OpenAPI schema of the two API routes. FastAPI's ``/docs`` and
    ``/redoc`` pages are switched off: they load Swagger UI and ReDoc from a CDN.

Bad uploads are answered, never crash the server: over ``max_upload_bytes`` -> 413 (counted
as the body arrives, see :mod:`deepstart.serve.limit`); not an image, broken or empty -> 400;
more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible decompression bomb) -> 413. Each
error body is ``{"detail": "what was wrong"}``.

Example:
    >>> from fastapi.testclient import TestClient
    >>> client = TestClient(create_app("shapes.zip"))
    >>> client.post("/api/predict", files={"file": open("circle.png", "rb")}).json()["label"]
    'circle'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from deepstart.serve.card import model_card
from deepstart.serve.engine import Engine, UploadError
from deepstart.serve.limit import MAX_UPLOAD_BYTES, BodyLimit, describe_bytes
from deepstart.ship.bundle import load_bundle

STATIC = Path(__file__).resolve().parent / "static"
# The framing of a multipart body (boundaries, part headers, the small form fields) on top
# of the file itself; the limit a client sees is on the file.
_FORM_SLACK = 64 * 2**10
# The page loads only its own files; heat maps are data: URIs and dropped files blob: URLs.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class", description="class name")
    probability: float = Field(description="softmax probability in [0, 1]")


class PredictionResult(BaseModel):
    label: str = Field(description="the most likely class")
    top: list[ClassProbability] = Field(description="the top_k classes, most likely first")
    probabilities: dict[str, float] = Field(description="every class -> probability")
    explain: str = Field(description="the heat-map method used: gradcam, saliency or none")
    input: str | None = Field(
        None, description="PNG data URI of the pixels the model saw (at its input size)"
    )
    overlay: str | None = Field(
        None, description="PNG data URI: the heat map of the top class over that image"
    )
    warnings: list[str] = Field(
        description="how this image differs from the training images (inverted, off-centre, ...)"
    )
    seconds: float = Field(description="server time for decoding, the model and the heat map")


class ModelCard(BaseModel):
    name: str = Field(description="the bundle's file or directory name")
    arch: str | None = Field(None, description="registry architecture, e.g. vgg_small")
    dataset: str | None = Field(None, description="the training dataset")
    classes: list[str]
    input: dict[str, Any] = Field(description="size, channels, resize policy, mean and std")
    drawable: bool = Field(description="grey and small (MNIST-like): the page offers a canvas")
    params: int | None = Field(None, description="number of parameters (None for ONNX)")
    test: dict[str, Any] | None = Field(None, description="accuracy, loss, n (+ per_class)")
    epochs: int | None = None
    curves: list[dict[str, Any]] = Field(description="metrics.jsonl rows of a run directory")
    charts: list[str] = Field(description="the training curves as inline SVG")
    explain: list[str] = Field(description="heat-map methods this model supports")
    max_upload_bytes: int


class ErrorDetail(BaseModel):
    detail: str


def create_app(
    bundle_path: str | os.PathLike,
    *,
    device: str = "cpu",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    concurrency: int | None = None,
) -> FastAPI:
    """The web app for one bundle; loads the model once, before the first request.

    Args:
        bundle_path: a ``.zip`` or folder bundle, a run directory (adds training curves to
            the card) or an ``.onnx`` file (no heat maps).
        device: where the PyTorch model runs: "cpu", "cuda", "mps" or "auto".
        max_upload_bytes: the largest image file accepted (413 above it).
        concurrency: uploads processed at once (default one per CPU core); more wait.

    Raises:
        BundleError: the bundle cannot be loaded (see :func:`deepstart.ship.bundle.load_bundle`).

    Example:
        >>> app = create_app("runs/20260101-120000-shapes-vgg_small")
    """
    bundle = load_bundle(bundle_path, device=device)
    engine = Engine(bundle, concurrency)
    card = model_card(bundle, bundle_path, engine.explain)
    card["max_upload_bytes"] = int(max_upload_bytes)
    app = FastAPI(
        title=f"deepstart serve: {card['name']}",
        description="Try an image classifier: upload an image to POST /api/predict; the "
        "model card is at GET /api/model.",
        docs_url=None,  # Swagger UI and ReDoc come from a CDN; the schema is /openapi.json
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.card = card
    app.add_middleware(
        BodyLimit,
        max_bytes=int(max_upload_bytes) + _FORM_SLACK,
        shown_limit=int(max_upload_bytes),
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # The page and the card do no blocking work: async, so that they never wait for a
    # worker thread behind queued predictions.
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/api/model", response_model=ModelCard, summary="The model card")
    async def get_model() -> dict[str, Any]:
        """Dataset, classes, input preprocessing, test accuracy and training curves."""
        return card

    @app.post(
        "/api/predict",
        response_model=PredictionResult,
        summary="Classify one image",
        responses={
            400: {"model": ErrorDetail, "description": "not an image, broken, or empty"},
            413: {"model": ErrorDetail, "description": "file or pixel count over the limit"},
        },
    )
    def post_predict(
        file: Annotated[
            UploadFile, File(description="an image file: PNG, JPEG, GIF, BMP, WebP, ...")
        ],
        top_k: Annotated[int, Form(ge=1, le=1000, description="classes returned, best first")] = 3,
        explain: Annotated[
            Literal["gradcam", "saliency", "none"],
            Form(description="heat map of the top class: gradcam, saliency or none"),
        ] = "none",
    ) -> dict[str, Any]:
        """Top-k classes and probabilities of the image, preprocessed as the model was
        trained; with ``explain``, a heat map of where the evidence for the top class lies.
        (A plain ``def``: FastAPI runs it in a worker thread, off the event loop.)"""
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(
                413, f"upload too large: the limit is {describe_bytes(max_upload_bytes)}"
            )
        try:
            return engine.predict(data, top_k=top_k, explain=explain)
        except UploadError as e:
            raise HTTPException(e.status, e.message) from None

    return app
