"""The FastAPI application: the page, its API and the checks every request passes.

`create_app(model, identity, settings)` wires a loaded CxrModel to routes; the command (`cxr.app`)
loads the model once and hands the app to uvicorn. Probabilities come from `CxrModel.probabilities`,
the path `cxr.predict` takes, through the batcher that lets concurrent requests share a forward pass.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from fastapi_offline import FastAPIOffline
from PIL import Image

from cxr.serving.app import uploads
from cxr.serving.app.batching import Batcher
from cxr.serving.app.identity import DEFAULT_POINT, Identity
from cxr.serving.app.uploads import Limits, UploadError
from cxr.serving.gradcam import blend, ensemble_gradcam

HERE = Path(__file__).resolve().parent
WARM_UP_BATCHES = (1, 2, 3)  # batch shapes traced at start (Keras's predict step retraces per new shape)
TOKEN_COOKIE = "cxr_token"
FILE_FIELD, FINDING_FIELD, OPACITY_FIELD, TOKEN_FIELD = "file", "finding", "opacity", "token"


def _multipart(properties: dict, required: list[str]) -> dict:
    """What /docs shows for an upload route (the body is parsed by `uploads`, not by FastAPI)."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


BINARY = {"type": "string", "format": "binary"}
PREDICT_FORM = _multipart({FILE_FIELD: {"type": "array", "items": BINARY}}, [FILE_FIELD])
GRADCAM_FORM = _multipart(
    {
        FILE_FIELD: BINARY,
        FINDING_FIELD: {"type": "string"},
        OPACITY_FIELD: {"type": "number", "minimum": 0, "maximum": 1},
    },
    [FILE_FIELD, FINDING_FIELD],
)


@dataclass(frozen=True)
class Settings:
    """What `cxr.app`'s config says about serving (conf/app.yaml)."""

    limits: Limits
    token: str | None = None
    batch_size: int = 16
    batch_wait_ms: float = 5.0
    keep_uploads: Path | None = None
    operating_point: str = DEFAULT_POINT
    preview_px: int = 1024


class Unauthorised(Exception):
    pass


def ranked(pathologies: Sequence[str], scores: np.ndarray, thresholds: dict[str, float | None]) -> list[dict]:
    """One image's findings, most probable first, each with its threshold and whether it is reached
    (a finding without a threshold, none chosen on validation, is never called)."""
    rows = [
        {
            "finding": p,
            "probability": float(s),
            "threshold": thresholds.get(p),
            "positive": thresholds.get(p) is not None and float(s) >= thresholds[p],
        }
        for p, s in zip(pathologies, scores, strict=True)
    ]
    return sorted(rows, key=lambda r: -r["probability"])


def preview(pixels: np.ndarray, side: int) -> str:
    """What the model read (a DICOM after its window, too), as a PNG data URL at most `side` pixels wide."""
    img = Image.fromarray(pixels, mode="L")
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def warm_up(model) -> None:
    """Trace the model's predict step before the first user waits for it: a few seconds for a DenseNet
    on a CPU, once per new batch shape until Keras generalises the batch dimension (after two)."""
    blank = np.zeros((model.spec.image_sizes[0],) * 2, np.uint8)
    for count in WARM_UP_BATCHES:
        model.probabilities([blank] * count)


def create_app(model, identity: Identity, settings: Settings, report_card: bytes | None = None) -> FastAPI:
    """The app around `model` (a loaded CxrModel); `identity` is what `/api/model` and the page show."""
    identity = replace(identity, report_card=report_card is not None)
    batcher = Batcher(model.probabilities, settings.batch_size, settings.batch_wait_ms / 1000.0)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    pathologies = list(model.pathologies)

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        await batcher.call(warm_up, model)
        yield
        await batcher.stop()

    # FastAPI's own /docs (Swagger UI) and /redoc, with their scripts, stylesheet and favicon served from
    # the fastapi-offline package (MIT; it ships Swagger UI 5, Apache-2.0, and ReDoc 2, MIT) rather than
    # a CDN: the app fetches nothing from elsewhere. Open without a token, as the schema always was.
    app = FastAPIOffline(
        title="cxr",
        summary="Chest X-ray findings from the model the registry promoted",
        lifespan=lifespan,
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def authorised(request: Request) -> bool:
        if not settings.token:
            return True
        header = request.headers.get("authorization", "")
        given = header[len("bearer ") :] if header.lower().startswith("bearer ") else ""
        given = given or request.cookies.get(TOKEN_COOKIE, "")
        return hmac.compare_digest(given.encode(), settings.token.encode())

    def require(request: Request) -> None:
        if not authorised(request):
            raise Unauthorised

    @app.exception_handler(UploadError)
    async def upload_error(_request, err: UploadError):
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(Unauthorised)
    async def unauthorised(_request, _err):
        return JSONResponse(
            {"detail": "a valid token is required: send 'Authorization: Bearer <token>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.get("/healthz", summary="Whether the server answers (no token needed)")
    async def healthz():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request):
        if not authorised(request):
            return templates.TemplateResponse(request, "login.html", {}, status_code=401)
        return templates.TemplateResponse(request, "index.html", {"title": identity.name or "cxr"})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await uploads.read_form(request, settings.limits)
        response = RedirectResponse("/", status_code=303)
        token = form.fields.get(TOKEN_FIELD, "")
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/api/model", summary="The model's identity, thresholds and operating points")
    async def about(request: Request):
        require(request)
        return {**identity.as_json(), "default_operating_point": settings.operating_point}

    @app.get("/report", response_class=HTMLResponse, summary="The model run's report card, where it has one")
    async def report(request: Request):
        require(request)
        if report_card is None:
            return JSONResponse({"detail": "this model's run has no report card"}, status_code=404)
        return HTMLResponse(report_card)

    def thresholds_at(point: str | None) -> tuple[str, dict[str, float | None]]:
        point = point or settings.operating_point
        if point not in identity.operating_points:
            known = ", ".join(identity.operating_points)
            raise UploadError(422, f"operating_point={point!r}: this model has {known}")
        return point, identity.operating_points[point]

    def decode_all(files: list[uploads.Upload]) -> list[tuple[str, np.ndarray]]:
        decoded = []
        for i, upload in enumerate(files):
            try:
                decoded.append(uploads.decode(upload.data, settings.limits))
            except UploadError as err:
                raise UploadError(err.status, f"file {i + 1} ({upload.name!r}): {err}") from None
        if settings.keep_uploads is not None:
            for upload, (kind, _) in zip(files, decoded, strict=True):
                uploads.keep(upload.data, kind, settings.keep_uploads)
        return decoded

    @app.post("/api/predict", summary="Findings for one or more images", openapi_extra=PREDICT_FORM)
    async def predict(request: Request, operating_point: str | None = None, preview_image: bool = False):
        """Multipart field `file`, once per image (PNG, JPEG or DICOM). Probabilities are `cxr.predict`'s;
        `operating_point` picks the thresholds (`/api/model` lists them); `preview_image=true` adds
        what the model read as a PNG data URL."""
        require(request)
        point, thresholds = thresholds_at(operating_point)
        with batcher.arriving_request():
            form = await uploads.read_form(request, settings.limits)
            if not form.files:
                raise UploadError(400, f"no image: send each as a multipart field {FILE_FIELD!r}")
            decoded = await asyncio.to_thread(decode_all, form.files)
        scores = await batcher.probabilities([pixels for _, pixels in decoded])
        results = []
        for upload, (kind, pixels), row in zip(form.files, decoded, scores, strict=True):
            rows = ranked(pathologies, row, thresholds)
            result = {
                "file": upload.name,
                "kind": kind,
                "height": int(pixels.shape[0]),
                "width": int(pixels.shape[1]),
                "probabilities": {p: float(s) for p, s in zip(pathologies, row, strict=True)},
                "findings": [r["finding"] for r in rows if r["positive"]],
                "ranked": rows,
            }
            if preview_image:
                result["preview"] = await asyncio.to_thread(preview, pixels, settings.preview_px)
            results.append(result)
        return {"model": identity.uri, "operating_point": point, "results": results}

    @app.post("/api/gradcam", summary="A finding's Grad-CAM heatmap as a PNG", openapi_extra=GRADCAM_FORM)
    async def gradcam(request: Request):
        """Multipart: one `file`, a `finding`; without `opacity`, the colour-mapped heatmap alone at the
        image's size (for a viewer that blends it); with `opacity` (0 to 1), blended over the image."""
        require(request)
        form = await uploads.read_form(request, settings.limits)
        if len(form.files) != 1:
            raise UploadError(400, f"send exactly one image as the multipart field {FILE_FIELD!r}")
        finding = form.fields.get(FINDING_FIELD, "")
        if finding not in pathologies:
            raise UploadError(422, f"finding={finding!r}: choose one of {', '.join(pathologies)}")
        opacity = _opacity(form.fields.get(OPACITY_FIELD))
        ((_, pixels),) = await asyncio.to_thread(decode_all, form.files)
        heatmap = await batcher.call(ensemble_gradcam, model.members, pixels, pathologies.index(finding))
        picture = await asyncio.to_thread(_overlay, pixels, heatmap, opacity)
        return Response(picture, media_type="image/png")

    return app


def _opacity(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        opacity = float(value)
    except ValueError:
        opacity = -1.0
    if not 0.0 <= opacity <= 1.0:
        raise UploadError(422, f"opacity={value!r}: give a number from 0 to 1")
    return opacity


def _overlay(pixels: np.ndarray, heatmap: np.ndarray, opacity: float | None) -> bytes:
    """PNG bytes of the heatmap alone (opacity None) or blended over the image at `opacity`."""
    out = io.BytesIO()
    picture = blend(pixels, heatmap, alpha=1.0 if opacity is None else opacity)
    picture.save(out, format="PNG", compress_level=1)
    return out.getvalue()
