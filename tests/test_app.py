"""`python -m cxr.app`: the API on a real server (the command itself, on a free 127.0.0.1 port, with the
tiny registered model), DICOM uploads made here from real NIH samples, the limits, request batching,
and the page in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data.images import read_grey
from cxr.serving.app.batching import Batcher
from tests.conftest import REPO, TINY_MODEL, own_run_dir
from tests.services import free_port, wait_for_http

TOKEN = "test-token-123"
PATIENT = "Doe^Jane"  # written into the test DICOMs: must never come back or reach the log
SAMPLES = ("full_1024px/00000001_000.png", "kcr_128px/00000002_000.png")  # 1024 px grey, 128 px RGB
MAX_FILES, MAX_FILE_MB = 3, 2


@dataclass(frozen=True)
class AppServer:
    url: str
    model_uri: str
    tracking_uri: str
    log: Path
    kept: Path

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def post(self, path: str, files, token: str | None = TOKEN, data=None, **params):
        import requests

        headers = self.auth(token) if token else {}
        return requests.post(
            f"{self.url}{path}", files=files, data=data, headers=headers, params=params, timeout=120
        )


@pytest.fixture(scope="module")
def app_server(tiny_store, tmp_path_factory):
    """`python -m cxr.app model=models:/cxr-tiny/1` with a token, small limits and keep_uploads, as typed."""
    tmp = tmp_path_factory.mktemp("app")
    port, log, kept = free_port(), tmp / "app.log", tmp / "kept"
    args = [
        f"model=models:/{TINY_MODEL}/1",
        f"tracking.uri={tiny_store.cfg.tracking.uri}",
        f"port={port}",
        f"max_files={MAX_FILES}",
        f"max_file_mb={MAX_FILE_MB}",
        f"keep_uploads={kept}",
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxr.app", *own_run_dir(args)],
            cwd=REPO,
            env={**os.environ, "CXR_APP_TOKEN": TOKEN},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", process, log)
        yield AppServer(url, f"models:/{TINY_MODEL}/1", tiny_store.cfg.tracking.uri, log, kept)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def in_process(app_server):
    """The same model loaded here, and what `cxr.predict` computes for files (its `predict_files`)."""
    import mlflow

    from cxr.serving import pyfunc

    mlflow.set_tracking_uri(app_server.tracking_uri)
    return pyfunc.load(app_server.model_uri)


def sample(shared_data: Path, name: str) -> bytes:
    return (shared_data / "nih-samples" / name).read_bytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (and whose pixel data is a few bytes): the pixel cap
    must answer from the header, before anything is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def dicom_bytes(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", payload: str = "raw", **attributes
) -> bytes:
    """A single-frame grey DICOM of `pixels`, made with pydicom: uncompressed (explicit VR little endian)
    by default; `payload="none"` leaves the pixel data out, `"encapsulated"` stores bytes no decoder
    can read under the TransferSyntaxUID given."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = attributes.pop("TransferSyntaxUID", ExplicitVRLittleEndian)
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT, "P-0001", "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, photometric, 0
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, attributes.pop("BitsStored", bits), bits - 1
    for key, value in attributes.items():
        setattr(ds, key, value)
    if payload == "raw":
        ds.PixelData = pixels.tobytes()
    elif payload == "encapsulated":
        ds.PixelData = encapsulate([b"not a compressed image stream"])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ---------------------------------------------------------------- DICOM decoding (no server)
def test_dicom_monochrome1_is_inverted_and_a_window_scales_like_the_cache():
    pytest.importorskip("pydicom")
    from cxr.serving.dicom import read_dicom

    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(read_dicom(dicom_bytes(grey)), grey)
    assert np.array_equal(read_dicom(dicom_bytes(255 - grey, "MONOCHROME1")), grey)
    twelve = (grey.astype(np.uint16) * 16).reshape(16, 16)  # 12-bit data in 16-bit words, no window
    expected = np.rint(twelve.astype(np.float32) * np.float32(255 / 4095)).astype(np.uint8)  # to_grey's
    assert np.array_equal(read_dicom(dicom_bytes(twelve, BitsStored=12)), expected)
    # a window of [1024, 2048): below black, above white, linear between
    windowed = read_dicom(dicom_bytes(twelve, BitsStored=12, WindowCenter=1536, WindowWidth=1024))
    assert windowed[twelve < 1024].max() == 0 and windowed[twelve >= 2048].min() == 255
    inside = (twelve >= 1100) & (twelve < 2000)
    assert np.all(np.diff(windowed[inside].astype(int)) >= 0) and 0 < windowed[inside].mean() < 255


# ---------------------------------------------------------------- config and thresholds (no server)
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("port=0", "port"),
        ("max_files=0", "max_files"),
        ("max_file_mb=0", "max_file_mb"),
        ("batch_size=0", "batch_size"),
    ],
)
def test_a_bad_setting_is_named_before_the_model_loads(override, key):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cxr.app import build
    from cxr.config import CONF_DIR, register_configs
    from cxr.runtime.errors import CxrError

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("app", ["model_uri=models:/nothing@champion", override])
    finally:
        GlobalHydra.instance().clear()
    with pytest.raises(CxrError, match=f"^{key}="):
        build(cfg)


def test_operating_points_are_the_validation_thresholds_and_any_the_spec_carries():
    from types import SimpleNamespace

    from cxr.serving.app.identity import operating_points
    from cxr.serving.app.server import ranked

    old = SimpleNamespace(thresholds={"A": 0.5, "B": None})
    assert operating_points(old) == {"validation": {"A": 0.5, "B": None}}
    new = SimpleNamespace(thresholds={"A": 0.5, "B": None}, operating_points={"spec90": {"A": 0.2, "B": 0.9}})
    assert list(operating_points(new)) == ["validation", "spec90"]
    rows = ranked(["A", "B"], np.array([0.3, 0.95]), operating_points(new)["spec90"])
    assert [(r["finding"], r["positive"]) for r in rows] == [("B", True), ("A", True)]
    rows = ranked(["A", "B"], np.array([0.3, 0.95]), operating_points(new)["validation"])
    assert [(r["finding"], r["positive"]) for r in rows] == [
        ("B", False),
        ("A", False),
    ]  # no threshold: no call


# ---------------------------------------------------------------- batching (no server)
def test_requests_that_arrive_while_the_model_is_busy_share_one_pass():
    """The first request holds the model; three more queue up meanwhile and go through in one pass."""

    async def scenario():
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def predict(images):
            if len(images) == 1 and images[0][0, 0] == 0:  # the first request: wait to be released
                asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
            return np.stack([img.mean(axis=(0, 1)).repeat(2) for img in images])

        batcher = Batcher(predict, batch_size=8, wait_s=0.0)
        await batcher.start()
        try:
            images = [np.full((4, 4), i, np.float32) for i in range(4)]
            first = asyncio.create_task(batcher.probabilities(images[:1]))
            while batcher.passes != [1]:
                await asyncio.sleep(0.001)
            rest = [asyncio.create_task(batcher.probabilities([img])) for img in images[1:]]
            while batcher._queue.qsize() < 3:
                await asyncio.sleep(0.001)
            release.set()
            answers = await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()
        return batcher.passes, answers

    passes, answers = asyncio.run(scenario())
    assert passes == [1, 3]
    assert [a.tolist() for a in answers] == [[[i, i]] for i in (0.0, 1.0, 2.0, 3.0)]


# ---------------------------------------------------------------- the API on a real server
@pytest.mark.slow
def test_the_api_answers_what_cxr_predict_answers_for_real_images(
    app_server, in_process, shared_data, tmp_path
):
    import requests

    from cxr.serving.inference import predict_files

    files = [("file", (Path(n).name, sample(shared_data, n), "image/png")) for n in SAMPLES]
    reply = app_server.post("/api/predict", files)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    expected = predict_files(in_process, [str(shared_data / "nih-samples" / n) for n in SAMPLES])
    assert [r["width"] for r in results] == [1024, 128]
    for result, scores in zip(results, expected.scores, strict=True):
        got = np.array([result["probabilities"][p] for p in in_process.pathologies])
        np.testing.assert_allclose(got, scores, atol=1e-6, rtol=0)
        assert [r["probability"] for r in result["ranked"]] == sorted(got.tolist(), reverse=True)
        assert result["findings"] == [r["finding"] for r in result["ranked"] if r["positive"]]
        assert set(result["findings"]) == set(in_process.findings(scores[None])[0])
    # who answered, and its thresholds
    about = requests.get(f"{app_server.url}/api/model", headers=app_server.auth(), timeout=30).json()
    assert (about["name"], about["version"], about["kind"]) == (TINY_MODEL, "1", "single")
    assert about["operating_points"]["validation"] == in_process.spec.thresholds
    assert set(about["metrics"]) == {"val", "test"} and about["metrics"]["val"]["auc_mean"] > 0
    assert about["report_card"] is True  # every evaluation writes one (issue 21): the page links it
    assert set(about["operating_points"]) == {"validation", "spec90", "spec95", "sens90", "sens95"}
    at_spec90 = app_server.post("/api/predict", files, operating_point="spec90").json()["results"]
    for result, scores in zip(at_spec90, expected.scores, strict=True):  # the model's own spec90 thresholds
        assert set(result["findings"]) == set(in_process.findings(scores[None], "spec90")[0])
    card = requests.get(f"{app_server.url}/report", headers=app_server.auth(), timeout=60)
    assert card.status_code == 200 and "<html" in card.text.lower() and TINY_MODEL in card.text
    assert requests.get(f"{app_server.url}/report", timeout=60).status_code == 401
    # uploads are kept only where asked, under names of the server's own
    kept = sorted(app_server.kept.iterdir())
    assert kept and all(p.suffix == ".png" and len(p.stem) == 32 for p in kept)


@pytest.mark.slow
@pytest.mark.parametrize("docs", ["/docs", "/redoc"])
def test_the_openapi_pages_load_everything_from_the_app(app_server, docs):
    """FastAPI's pages, open without a token as always, with Swagger UI and ReDoc from a package, no CDN."""
    import requests

    reply = requests.get(f"{app_server.url}{docs}", timeout=30)
    assert reply.status_code == 200 and "text/html" in reply.headers["content-type"]
    urls = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', reply.text)
    assert any(u.endswith(".js") for u in urls), reply.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{docs} fetches {url} from elsewhere"
        assert requests.get(f"{app_server.url}{url}", timeout=30).status_code == 200, url
    assert requests.get(f"{app_server.url}/openapi.json", timeout=30).json()["openapi"].startswith("3.1")


@pytest.mark.slow
def test_a_dicom_gives_the_findings_of_its_png_and_keeps_the_patient_out(app_server, shared_data):
    pytest.importorskip("pydicom")
    name = SAMPLES[0]
    png = sample(shared_data, name)
    grey = read_grey(png)
    files = [
        ("file", ("x.png", png, "image/png")),
        ("file", ("m2.dcm", dicom_bytes(grey), "application/dicom")),
        ("file", ("m1.dcm", dicom_bytes(255 - grey, "MONOCHROME1"), "application/octet-stream")),
    ]
    reply = app_server.post("/api/predict", files, preview_image="true")
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["kind"] for r in results] == ["PNG", "DICOM", "DICOM"]
    for result in results[1:]:
        np.testing.assert_allclose(
            list(result["probabilities"].values()), list(results[0]["probabilities"].values()), atol=1e-6
        )
        assert result["findings"] == results[0]["findings"]
        assert result["preview"].startswith("data:image/png;base64,")
    answer = json.dumps([{k: v for k, v in r.items() if k != "preview"} for r in results])  # base64 aside
    for forbidden in (PATIENT, "Doe", "P-0001"):
        assert forbidden not in answer
        assert forbidden not in app_server.log.read_text()


@pytest.mark.slow
def test_dicoms_without_usable_pixels_get_a_clear_message(app_server):
    pytest.importorskip("pydicom")
    from pydicom.uid import JPEG2000Lossless

    no_pixels = dicom_bytes(np.zeros((8, 8), np.uint8), payload="none")
    reply = app_server.post("/api/predict", [("file", ("a.dcm", no_pixels, "application/dicom"))])
    assert reply.status_code == 422 and "no pixel data" in reply.json()["detail"]

    compressed = dicom_bytes(
        np.zeros((8, 8), np.uint8), payload="encapsulated", TransferSyntaxUID=JPEG2000Lossless
    )
    reply = app_server.post("/api/predict", [("file", ("b.dcm", compressed, "application/dicom"))])
    detail = reply.json()["detail"]
    assert reply.status_code == 422 and "cannot be decoded" in detail and JPEG2000Lossless in detail
    assert PATIENT not in reply.text

    header = {"Rows": 10000, "Columns": 10000, "TransferSyntaxUID": JPEG2000Lossless}
    huge = dicom_bytes(np.zeros((8, 8), np.uint8), payload="encapsulated", **header)  # caught before decoding
    reply = app_server.post("/api/predict", [("file", ("c.dcm", huge, "application/dicom"))])
    assert reply.status_code == 413 and "max_pixels" in reply.json()["detail"]


@pytest.mark.slow
def test_bad_input_gets_its_status_and_a_message_and_the_server_goes_on(app_server, shared_data):
    png = sample(shared_data, SAMPLES[1])
    one = lambda name, data: [("file", (name, data, "image/png"))]  # noqa: E731
    cases = {
        "empty file": (one("a.png", b""), TOKEN, 400, "empty"),
        "text named .png": (
            one("a.png", b"hello, not an image\n" * 20),
            TOKEN,
            415,
            "not a PNG, JPEG or DICOM",
        ),
        "truncated PNG": (one("a.png", png[: len(png) // 2]), TOKEN, 422, "not a readable PNG"),
        "20000 x 20000": (one("big.png", png_header(20000, 20000)), TOKEN, 413, "max_pixels"),
        "10000 x 10000": (one("big.png", png_header(10000, 10000)), TOKEN, 413, "max_pixels"),
        "too large a file": (one("a.png", png + b"\0" * (MAX_FILE_MB * 2**20)), TOKEN, 413, "max_file_mb"),
        "too many files": (one("a.png", png) * (MAX_FILES + 1), TOKEN, 413, "too many files"),
        "wrong token": (one("a.png", png), "not-the-token", 401, "token"),
        "no token": (one("a.png", png), None, 401, "token"),
    }
    for case, (files, token, status, words) in cases.items():
        reply = app_server.post("/api/predict", files, token=token)
        assert (reply.status_code, words in reply.json()["detail"]) == (status, True), (case, reply.text)
    reply = app_server.post("/api/predict", one("a.png", png), operating_point="spec99")
    assert reply.status_code == 422 and "validation" in reply.json()["detail"]
    assert app_server.post("/api/predict", one("a.png", png)).status_code == 200  # still answering


@pytest.mark.slow
def test_gradcam_heatmap_and_overlay_at_the_image_size(app_server, in_process, shared_data):
    png = sample(shared_data, SAMPLES[1])
    finding = in_process.pathologies[0]
    files = [("file", ("a.png", png, "image/png"))]
    heat = app_server.post("/api/gradcam", files, data={"finding": finding})
    blended = app_server.post("/api/gradcam", files, data={"finding": finding, "opacity": "0.4"})
    for reply in (heat, blended):
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(reply.content)).size == (128, 128)
    assert heat.content != blended.content
    reply = app_server.post("/api/gradcam", files, data={"finding": "Broken_Leg"})
    assert reply.status_code == 422 and finding in reply.json()["detail"]


# ---------------------------------------------------------------- the page in a real browser
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium: apt-get install chromium (.ci/run does)")
    pytest.importorskip("playwright", reason="pip install playwright (the test extra)")
    return found


@pytest.mark.slow
def test_the_page_in_a_real_browser(app_server, shared_data, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium()
    image = shared_data / "nih-samples" / SAMPLES[0]
    shot = tmp_path / "page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_server.url)
            page.fill("input[name=token]", TOKEN)  # the page asks for the token first
            page.click("button[type=submit]")
            page.wait_for_selector("#identity dt:text('validation mean AUC')")
            page.set_input_files("#files", str(image))
            page.wait_for_function("document.querySelectorAll('.card.done tbody tr').length === 14")
            first = page.locator(".card.done tbody tr").first
            first.click()
            page.wait_for_selector(".card .heat.loaded")
            page.fill("#opacity", "0.5")
            page.screenshot(path=str(shot), full_page=True)
            rows = page.locator(".card.done tbody tr td:nth-child(2)").all_inner_texts()
            with page.expect_download() as csv:
                page.click("#csv")
            table = Path(csv.value.path()).read_text().splitlines()
            with page.expect_download() as png:
                page.click(".card .png")
            overlay = Image.open(png.value.path())
            # /docs renders the schema (OpenAPI 3.1: Swagger UI 5) with nothing fetched from elsewhere
            docs = browser.new_page()
            asked = []
            docs.on("request", lambda r: asked.append(r.url))
            docs.goto(f"{app_server.url}/docs")
            docs.wait_for_selector(".opblock-summary-path[data-path='/api/predict']", timeout=30_000)
        finally:
            browser.close()
    assert asked and all(u.startswith(app_server.url + "/") for u in asked), asked
    calls = [float(r) for r in rows]
    assert len(calls) == 14
    assert len(table) == 2 and table[0].startswith("image,findings,Atelectasis")
    assert table[1].startswith(f'"{image.name}"') and overlay.size == (1024, 1024)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 20, "the screenshot is blank"
