"""The report card of a real training run: report.html is self-contained (every plot embedded, nothing
fetched), names the registered version, and report.json holds the numbers the run logged as metrics."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cxr.tracking import names as mn
from tests.conftest import TINY_MODEL


class Page(HTMLParser):
    """Tags, embedded images and anything the page would fetch from elsewhere."""

    def __init__(self):
        super().__init__()
        self.tags, self.images, self.external, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href") and value:
                if value.startswith("data:image/png;base64,"):
                    self.images.append(base64.b64decode(value.split(",", 1)[1]))
                else:
                    self.external.append(value)

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def card(tiny_store, tmp_path_factory):
    mlflow.set_tracking_uri(tiny_store.cfg.tracking.uri)
    folder = tmp_path_factory.mktemp("card")
    root = f"runs:/{tiny_store.run_id}/report"
    html = mlflow.artifacts.download_artifacts(f"{root}/report.html", dst_path=str(folder))
    doc = json.loads(mlflow.artifacts.load_text(f"{root}/report.json"))
    page = Page()
    page.feed(Path(html).read_text(encoding="utf-8"))
    return tiny_store, page, doc


@pytest.mark.slow
def test_the_report_card_is_self_contained_and_names_the_version(card):
    store, page, doc = card
    assert page.tags[0] == "html" and "table" in page.tags and not page.external
    assert len(page.images) == 6 and all(
        png.startswith(b"\x89PNG") for png in page.images
    )  # 3 plots x 2 splits
    text = " ".join(page.text)
    assert f"models:/{TINY_MODEL}/1" in text and store.run_id in text
    assert "text-mined" in text and "Operating points" in text and "largest AUC gap" in text
    assert "Localisation against expert boxes" in text
    client = MlflowClient(store.cfg.tracking.uri)
    tags = client.get_model_version(TINY_MODEL, "1").tags
    assert tags[mn.REPORT_TAG] == f"runs:/{store.run_id}/{mn.REPORT_HTML_ARTIFACT}"


@pytest.mark.slow
def test_report_json_holds_the_logged_metrics_and_the_evidence(card):
    store, _, doc = card
    logged = MlflowClient(store.cfg.tracking.uri).get_run(store.run_id).data.metrics
    assert doc["metrics"] and all(logged[k] == pytest.approx(v) for k, v in doc["metrics"].items())
    for name in ("test/ece", "test/brier", "threshold/spec90/Effusion", "test/spec90/sensitivity/Effusion"):
        assert name in logged
    test = doc["splits"]["test"]
    assert {r["operating_point"] for r in test["operating_points"]} == {
        "spec90",
        "spec95",
        "sens90",
        "sens95",
    }
    assert {r["attribute"] for r in test["gaps"]} == {"sex", "age", "view", "follow_up"}
    assert doc["model"]["version"] == f"models:/{TINY_MODEL}/1" and doc["model"]["split digest"]
    located = test["localisation"]  # the tiny run scores localisation: the card shows it
    assert located["rows"][0]["finding"] == "mean over findings" and "pointing" in located["measures"]
    pointing = located["rows"][0]["cells"][located["measures"].index("pointing")]
    assert pointing == pytest.approx(
        [
            logged["test/localisation/pointing_mean"],
            *(logged[f"test/localisation/pointing_mean{b}"] for b in mn.interval("")),
        ]
    )
    assert not doc["splits"]["val"]["localisation"]


@pytest.mark.slow
def test_cxr_report_writes_the_card_of_a_registered_version_from_the_registry_alone(tiny_store, tmp_path):
    from tests.conftest import run_cli

    uri = f"tracking.uri={tiny_store.cfg.tracking.uri}"
    version = f"models:/{TINY_MODEL}/1"
    out = run_cli(
        "cxr.report",
        f"model={version}",
        f"compare={version}",
        "bootstrap.resamples=50",
        uri,
        f"hydra.run.dir={tmp_path}/card",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    page = Page()
    page.feed((tmp_path / "card" / "report.html").read_text(encoding="utf-8"))
    assert len(page.images) == 6 and f"models:/{TINY_MODEL}/1" in " ".join(page.text)
    doc = json.loads((tmp_path / "card" / "report.json").read_text())
    assert doc["model"]["version"] == f"models:/{TINY_MODEL}/1" and doc["model"]["run"] == tiny_store.run_id
    # compared with itself: side by side, every paired difference 0; test AUCs as the run logged them
    assert f"Compared with {version}" in " ".join(page.text) and doc["comparison"]["other"] == version
    mean = doc["comparison"]["rows"][-1]
    assert mean["finding"] == "mean" and mean["difference"] == 0 and mean["auc"] == mean["other_auc"]
    assert mean["test_auc"] == pytest.approx(doc["metrics"]["test/auc_mean"]) == mean["other_test_auc"]
    missing = run_cli("cxr.report", f"model=models:/{TINY_MODEL}/9", uri, f"hydra.run.dir={tmp_path}/none")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith(
        "cxr: error: cannot find"
    )
