"""A cxr model under `mlflow models serve` against hostile requests: every bad row is a 400 with cxr's
message and no stack trace, the pixel limits hold before anything is decoded, a big image within
them costs the server a bounded amount of memory (its peak RSS, measured around the request), and a
request stops itself before the server's timeout."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.runtime.errors import CxrError
from tests.conftest import TINY_MODEL
from tests.test_untrusted_images import encoded, png_16bit


@pytest.fixture(scope="module")
def server(tiny_store, tmp_path_factory):
    """`mlflow models serve` of the tiny store's model: requests capped at 2 G pixels, a 10 s timeout."""
    from tests.services import mlflow_process

    folder = tmp_path_factory.mktemp("served")
    serve = ["models", "serve", "-m", f"models:/{TINY_MODEL}/1", "--env-manager", "local", "--workers", "1"]
    env = {
        "MLFLOW_TRACKING_URI": tiny_store.cfg.tracking.uri,
        "CXR_MAX_REQUEST_PIXELS": "2000000000",
        "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "10",  # the request stops itself at 8 s
    }
    process, url = mlflow_process(serve, "/ping", folder, env)
    yield process, url
    process.terminate()
    process.wait(timeout=30)


def ask(url: str, *images: bytes, params: dict | None = None) -> tuple[int, dict]:
    rows = [[base64.b64encode(i).decode()] for i in images]
    request_body = {"dataframe_split": {"columns": ["image"], "data": rows}} | (
        {"params": params} if params else {}
    )
    body = json.dumps(request_body).encode()
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def model_process(pid: int) -> int:
    """The server's process that holds the model: the largest of `pid` and its descendants."""
    family, todo = [], [pid]
    while todo:
        current = todo.pop()
        family.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return max(family, key=lambda p: _status(p)["VmRSS"])


def _status(pid: int) -> dict[str, int]:
    """/proc/<pid>/status's memory lines, in bytes."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: int(v.split()[0]) * 1024
        for k, v in (line.split(":", 1) for line in lines)
        if v.strip().endswith("kB")
    }


def peak_growth(pid: int, send) -> tuple[object, int]:
    """What `send()` returns, and how far the process's peak RSS rose above its RSS before it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux 4.0+)
    before = _status(pid)["VmHWM"]
    result = send()
    return result, _status(pid)["VmHWM"] - before


@pytest.mark.slow  # a real server
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
def test_a_huge_image_is_refused_from_its_header_and_a_big_one_costs_a_bounded_amount_of_memory(server):
    process, url = server
    pid = model_process(process.pid)
    assert ask(url, encoded(np.zeros((64, 64), np.uint8), "PNG"))[0] == 200  # warm: the model has run once

    bomb = png_16bit(10_000, 10_000)  # 200 KB of PNG, 200 MB as 16-bit pixels
    (status, answer), growth = peak_growth(pid, lambda: ask(url, bomb))
    assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert (
        "a 10000 x 10000 image (100,000,000 pixels) is over the limit of 50,000,000 pixels"
        in answer["message"]
    )
    assert growth < 50e6, f"refusing it cost {growth / 1e6:.0f} MB"

    big = png_16bit(6_000, 6_000)  # 36 M pixels: within the limit
    (status, answer), growth = peak_growth(pid, lambda: ask(url, big))
    assert status == 200 and len(answer["predictions"]) == 1
    # decoding holds the 16-bit pixels (2 bytes each) and the 8-bit result (1); all at once in float32, as
    # before, it was 17 bytes a pixel (600 MB here)
    assert growth < 5 * 36e6, f"a 36 M-pixel 16-bit PNG cost the server {growth / 1e6:.0f} MB"

    widest = png_16bit(7_000, 7_000)  # 49 M pixels: each within the limit, 60 of them not
    (status, answer), growth = peak_growth(pid, lambda: ask(url, *[widest] * 60))
    assert status == 400, answer
    assert "over the limit of 2,000,000,000 a request (CXR_MAX_REQUEST_PIXELS)" in answer["message"]
    assert growth < 100e6  # told from the headers: nothing decoded


@pytest.mark.slow
def test_a_request_longer_than_the_servers_timeout_ends_itself_with_a_400_before_the_504(server):
    _, url = server
    status, answer = ask(url, *[png_16bit(6_000, 6_000)] * 50)  # 1.8 G pixels: far more than 10 s of decoding
    assert status == 400, answer  # not the server's 504, after which the work went on
    stopped = "the request was stopped after 8 s (80% of the server's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)"
    assert stopped in answer["message"]
    assert ask(url, encoded(np.zeros((64, 64), np.uint8), "PNG"))[0] == 200  # and the server goes on


@pytest.mark.slow
def test_bad_rows_are_a_400_with_cxrs_message_and_no_stack_trace(server):
    _, url = server
    fine = encoded(np.zeros((64, 64), np.uint8), "PNG")
    tiff = encoded(np.zeros((64, 64), np.float32), "TIFF")
    cases = {
        "it is a TIFF file; cxr reads PNG and JPEG only": [fine, tiff],
        "row 0 of column 'image': not a readable image: its content is neither PNG nor JPEG": [b"hello"],
        "bytes follow the end of the PNG image": [fine + os.urandom(40_000)],
    }
    for expected, images in cases.items():
        status, answer = ask(url, *images)
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
        assert expected in answer["message"] and "stack_trace" not in answer
        assert "Traceback" not in answer["message"]
    status, answer = ask(url, fine, encoded(np.zeros((40, 30), np.uint8), "JPEG"))
    assert status == 200 and len(answer["predictions"]) == 2


@pytest.mark.slow
def test_image_bytes_decode_alike_on_the_server_and_in_process(server, tiny_store):
    """One decoding for both: the served answer is what cxr.predict's CxrModel gives for the bytes."""
    import mlflow

    from cxr.serving import pyfunc

    _, url = server
    rgb = np.random.default_rng(3).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    image = io.BytesIO()
    Image.fromarray(rgb).save(image, "JPEG")
    status, answer = ask(url, image.getvalue())
    assert status == 200
    mlflow.set_tracking_uri(tiny_store.cfg.tracking.uri)
    model = pyfunc.load(f"models:/{TINY_MODEL}/1")
    expected = model.score([model.decoded(image.getvalue(), "x")])[0]
    served = np.array([answer["predictions"][0][p] for p in model.pathologies])
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    # another operating point is a request parameter; an unknown one a 400 naming the model's points
    status, at_sens95 = ask(url, image.getvalue(), params={"operating_point": "sens95"})
    assert (
        status == 200 and at_sens95["predictions"][0]["findings"] == model.findings(served[None], "sens95")[0]
    )
    status, answer = ask(url, image.getvalue(), params={"operating_point": "spec99"})
    assert (
        status == 400 and "operating_point='spec99': this model has validation, spec90" in answer["message"]
    )


def test_inside_mlflows_scoring_server_a_request_has_a_deadline_before_the_servers_timeout():
    from cxr.serving.limits import served_limits

    served = {"_MLFLOW_IS_IN_SERVING_ENVIRONMENT": "true", "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "30"}
    assert served_limits(served).seconds == pytest.approx(24.0)  # 80% of it
    assert served_limits({"_MLFLOW_IS_IN_SERVING_ENVIRONMENT": "true"}).seconds == pytest.approx(48.0)
    assert served_limits({}).seconds is None  # cxr.predict, a notebook: no deadline
    limits = served_limits({"CXR_MAX_IMAGE_PIXELS": "1000", "CXR_MAX_REQUEST_PIXELS": "5000"})
    assert (limits.max_image_pixels, limits.max_request_pixels) == (1000, 5000)
    with pytest.raises(CxrError, match="CXR_MAX_REQUEST_PIXELS='lots': give a positive whole number"):
        served_limits({"CXR_MAX_REQUEST_PIXELS": "lots"})


def test_a_request_past_its_deadline_stops_before_its_next_image():
    import pandas as pd

    from cxr.serving.limits import RequestLimits
    from cxr.serving.pyfunc import CxrModel, InvalidRequest, ModelSpec

    model = CxrModel.of([], ModelSpec(["Mass"], {"Mass": 0.5}, [32], [1.0]))  # never reaches a member
    frame = pd.DataFrame({"image": [base64.b64encode(encoded(np.zeros((64, 64), np.uint8), "PNG")).decode()]})
    with pytest.raises(
        CxrError,
        match=r"stopped after 0 s \(80% of the server's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT\), before",
    ):
        model.request_scores(frame, RequestLimits(seconds=0.0))
    assert issubclass(InvalidRequest, CxrError)  # what predict raises: MLflow's server answers 400
