"""The registry end on this machine: building a 5-member ensemble, and prediction latency per image.

1. `cxr.ensemble.build` over 5 registered versions (small CNNs on the demo-sized synthetic set, one
   trained by cxr.train, four more registered with planted validation AUCs): wall time, split into
   loading the members, scoring validation + test, and everything else (thresholds, bootstrap,
   plots, logging and registering the ensemble).
2. `cxr.predict.predict_files` latency per image for a single model and a 5-member ensemble of
   `densenet121_cbam` (random weights: the cost does not depend on them) at 224 and 320 px, on a
   real-size 1024x1024 PNG, batch 1 and batch 16.

    python bench/registry.py [--sizes 224 320] [--images 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def ensemble_build(folder: Path) -> None:
    import mlflow
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from cxr import ensemble
    from cxr.config import CONF_DIR, SmallCnnConfig, register_configs
    from cxr.data.labels import NIH_PATHOLOGIES
    from cxr.models import build_model
    from cxr.serving import pyfunc
    from cxr.tracking import versions as model_registry
    from cxr.train import train

    register_configs()
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    stores = [
        f"dataset.root={folder}/synthetic", f"dataset.cache_dir={folder}/prepared", f"tracking.uri={uri}",
        f"tracking.artifact_root={folder}/mlruns/artifacts", f"output_dir={folder}/output",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [
            "experiment=demo", "trainer.epochs=3", "tracking.registered_model_name=bench",
            "trainer.verbose=0", *stores,
        ])  # fmt: skip
        train(cfg, [])
        client = MlflowClient(uri)
        source = client.get_model_version("bench", "1")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(cfg.tracking.experiment_name)
        for k in range(4):
            model = build_model(OmegaConf.structured(SmallCnnConfig()), cfg.dataset.image_size, 14)
            spec = pyfunc.ModelSpec(
                list(NIH_PATHOLOGIES), dict.fromkeys(NIH_PATHOLOGIES, 0.5), [cfg.dataset.image_size], [1.0]
            )
            with mlflow.start_run() as run:
                for artifact in ("config.yaml", "split.csv"):
                    text = mlflow.artifacts.load_text(f"runs:/{source.run_id}/{artifact}")
                    mlflow.log_text(text, artifact)
                info = pyfunc.log_model([model], spec, registered_model_name="bench")
            tags = model_registry.version_tags(
                {model_registry.RANK_METRIC: 0.9 + k / 100},
                run.info.run_id,
                spec,
                source.tags["split_digest"],
                "cxr-demo",
            )
            model_registry.tag_version(client, "bench", str(info.registered_model_version), tags)
        ens_cfg = compose("ensemble", ["model_name=bench", f"tracking.uri={uri}"])
    start = time.perf_counter()
    ensemble.build(ens_cfg)
    total = time.perf_counter() - start

    # the two stages that grow with the members and the data, timed again on their own
    from cxr.serving.inference import predict_members
    from cxr.tracking import runs as tracking

    start = time.perf_counter()
    members = [pyfunc.load(f"models:/bench/{v}") for v in range(1, 6)]
    load = time.perf_counter() - start
    model = pyfunc.CxrModel.of([m.members[0] for m in members], members[0].spec)
    model.spec.image_sizes, model.spec.weights = [cfg.dataset.image_size] * 5, [0.2] * 5
    run_cfg, split = tracking.logged_run_inputs(source.run_id)
    start = time.perf_counter()
    predict_members(model, run_cfg.dataset, ["val", "test"], 64, split)
    score = time.perf_counter() - start
    print(
        f"\nensemble of 5 small CNNs at {cfg.dataset.image_size}px on the demo set: {total:.1f} s in all; "
        f"of which loading the 5 members {load:.1f} s, scoring validation + test {score:.1f} s, "
        f"the rest (thresholds, 1000-resample bootstraps for ensemble and members, plots, logging and "
        f"registering) {total - load - score:.1f} s"
    )


def latency(sizes: list[int], n_images: int, folder: Path) -> None:
    from omegaconf import OmegaConf

    from cxr.config import DenseNet121CbamConfig
    from cxr.data.labels import NIH_PATHOLOGIES
    from cxr.models import build_model
    from cxr.serving.inference import predict_files
    from cxr.serving.pyfunc import CxrModel, ModelSpec

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        path = folder / f"x{i}.png"
        Image.fromarray(rng.integers(0, 256, (1024, 1024), dtype=np.uint8)).save(path)
        paths.append(str(path))
    for size in sizes:
        net = build_model(OmegaConf.structured(DenseNet121CbamConfig(weights=None)), size, 14)
        for members in (1, 5):
            spec = ModelSpec(list(NIH_PATHOLOGIES), dict.fromkeys(NIH_PATHOLOGIES, 0.5), [size] * members,
                             [1 / members] * members)  # fmt: skip
            model = CxrModel.of([net] * members, spec)  # the same weights: the cost is what counts
            predict_files(model, paths[:2], batch_size=2)  # warm-up (graph tracing)
            for batch in (1, 16):
                start = time.perf_counter()
                predict_files(model, paths, batch_size=batch)
                per = (time.perf_counter() - start) / len(paths) * 1000
                print(
                    f"densenet121_cbam {size}px, {members} member(s), batch {batch:2d}: {per:7.0f} ms/image"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320])
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        ensemble_build(Path(tmp))
        latency(args.sizes, args.images, Path(tmp))


if __name__ == "__main__":
    main()
