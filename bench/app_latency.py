"""`cxr.app` under load: requests/s and p50/p95 latency for 1, 4 and 16 concurrent clients, each
posting one real 1024x1024 NIH image to `POST /api/predict`, against the in-process cost of the same
prediction (decode the PNG's bytes, `CxrModel.probabilities`, what the server runs per request).

The model is `--model` (`densenet121_cbam`, or the demo's `small_cnn`) with random weights (the
cost does not depend on them) at `--size` px, logged to a throwaway MLflow store and served by the
command as a user starts it (`python -m cxr.app model=runs:/<id>`, its own process). Clients are
threads here, so on a small machine they share its cores with the server, as a browser on the same
laptop would.

    CXR_SHARED_DATA=../shared/data python bench/app_latency.py [--model small_cnn] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE = "nih-samples/full_1024px/00000001_000.png"


def log_model(folder: Path, name: str, size: int) -> tuple[str, str]:
    """(tracking URI, run id) of a model with random weights logged as cxr's pyfunc in a new store."""
    import mlflow
    from omegaconf import OmegaConf

    from cxr.config import DenseNet121CbamConfig, SmallCnnConfig
    from cxr.data.labels import NIH_PATHOLOGIES
    from cxr.models import build_model
    from cxr.serving import pyfunc

    uri = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    options = {"densenet121_cbam": DenseNet121CbamConfig(weights=None), "small_cnn": SmallCnnConfig()}
    net = build_model(OmegaConf.structured(options[name]), size, len(NIH_PATHOLOGIES))
    spec = pyfunc.ModelSpec(list(NIH_PATHOLOGIES), dict.fromkeys(NIH_PATHOLOGIES, 0.5), [size], [1.0])
    experiment = mlflow.create_experiment("bench-app", artifact_location=str(folder / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        pyfunc.log_model([net], spec)
    return uri, run.info.run_id


def in_process_model(uri: str, run_id: str, data: bytes):
    """The model loaded here and warmed up: what `cxr.predict` runs, without a server."""
    import mlflow

    from cxr.data.images import read_grey
    from cxr.serving import pyfunc

    mlflow.set_tracking_uri(uri)
    model = pyfunc.load(f"runs:/{run_id}")
    for count in (1, 2, 3):  # the batch shapes the server traces at start
        model.probabilities([read_grey(data)] * count)
    return model


def one_in_process(model, data: bytes) -> float:
    """Seconds to decode the PNG's bytes and predict, in this process."""
    from cxr.data.images import read_grey

    start = time.perf_counter()
    model.probabilities([read_grey(data)])
    return time.perf_counter() - start


def one_request(session, url: str, data: bytes) -> float:
    """Seconds for one POST /api/predict of the image, answered."""
    start = time.perf_counter()
    reply = session.post(f"{url}/api/predict", files={"file": ("x.png", data, "image/png")}, timeout=300)
    reply.raise_for_status()
    return time.perf_counter() - start


def start_server(uri: str, run_id: str, folder: Path, port: int) -> subprocess.Popen:
    args = [f"model=runs:/{run_id}", f"tracking.uri={uri}", f"port={port}", f"hydra.run.dir={folder}/run"]
    log = (folder / "app.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "cxr.app", *args], stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the server did not answer; its log: {folder / 'app.log'}")


def load(url: str, data: bytes, clients: int, requests_in_all: int) -> tuple[float, list[float]]:
    """(requests/s, seconds per request) with `clients` threads posting the image in a loop."""
    import requests

    per_client = max(1, requests_in_all // clients)

    def client(_):
        session = requests.Session()
        return [one_request(session, url, data) for _ in range(per_client)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = [t for batch in pool.map(client, range(clients)) for t in batch]
    return len(times) / (time.perf_counter() - start), times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("densenet121_cbam", "small_cnn"), default="densenet121_cbam")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--pairs", type=int, default=30, help="alternating in-process and served predictions")
    args = parser.parse_args()
    shared = os.environ.get("CXR_SHARED_DATA")
    if not shared:
        raise SystemExit("set CXR_SHARED_DATA to the shared data folder (a real 1024 px NIH image is read)")
    data = (Path(shared) / IMAGE).read_bytes()
    machine = platform.processor() or platform.machine()
    python, busy = platform.python_version(), os.getloadavg()[0]
    print(f"{machine}, {os.cpu_count()} cores, Python {python}, load average {busy:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri, run_id = log_model(folder, args.model, args.size)
        port = free_port()
        server = start_server(uri, run_id, folder, port)
        try:
            import requests

            url, session = f"http://127.0.0.1:{port}", requests.Session()
            model = in_process_model(uri, run_id, data)
            load(url, data, 1, 3)  # warm-up
            # in-process and one client by turns, so both see the same load on a shared machine
            pairs = [
                (one_in_process(model, data), one_request(session, url, data)) for _ in range(args.pairs)
            ]
            base, served = (statistics.median(side) for side in zip(*pairs, strict=True))
            print(f"{args.model} {args.size} px, one 1024 px PNG, {args.pairs} alternating pairs:")
            print(f"  in-process p50 {ms(base)}, through the server p50 {ms(served)}")
            rows = []
            for clients in (1, 4, 16):
                rate, times = load(url, data, clients, args.requests)
                p50, p95 = np.percentile(times, [50, 95])
                rows.append((clients, rate))
                print(f"{clients:2d} clients: {rate:5.2f} requests/s, p50 {ms(p50)}, p95 {ms(p95)}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"server overhead at one client: {served / base - 1:+.0%} (target < 20%)")
    print(f"throughput at 16 clients vs 1: {rows[-1][1] / rows[0][1]:.2f}x (target >= 2x)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
