"""`python -m cxr.predict model=models:/NAME@champion images=PATH`: what a model sees in image files.

PATH is a file, a folder (its PNG and JPEG files) or a list `images=[a.png,b.jpg]`. Per image it
prints the probability of every finding and the findings at or above the model's validation-chosen
thresholds (`operating_point=spec90`: another point the model carries), averaged over the test-time
views the model was evaluated with (`tta.enabled=false`: the image alone; docs/evaluation.md); for a
folder it also writes `predictions.csv`; with `heatmaps=true` it writes one Grad-CAM overlay PNG per
image and positive finding (of the image alone), at the image's own resolution. A file that is
not an image is named in one `cxr: error:` line and the others go on; the exit code is 2 if any failed.
Every path is checked before the model loads (`cxr.serving.image_files`); files are decoded as a served
request's rows are (`cxr.data.untrusted_images`, at most `max_image_pixels` an image).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pandas as pd

from cxr.config import CONF_DIR, PredictConfig, check_predict, register_configs
from cxr.runtime.argv import model_alias
from cxr.runtime.console import announce
from cxr.runtime.errors import EXIT_USER_ERROR, exit_on_user_error, run_command

register_configs()


def run(cfg: PredictConfig) -> int:
    """Predict, print, write; returns how many inputs failed."""
    check_predict(cfg)
    # heavy (MLflow, Keras): after the checks
    import mlflow

    from cxr.data.tta import chosen
    from cxr.serving import pyfunc
    from cxr.serving.gradcam import write_overlays
    from cxr.serving.image_files import collect_images
    from cxr.serving.inference import predict_files

    files, failures, folder = collect_images(cfg.images)
    for reason in failures.values():  # the paths first: before the model loads (seconds)
        print(f"cxr: error: {reason}", file=sys.stderr)
    if not files:
        return len(failures)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = pyfunc.load(cfg.model_uri, cfg.tracking.trusted_imports)
    model.thresholds_at(cfg.operating_point)  # an unknown point: one line, before any image is read
    model.spec.tta = chosen(cfg.tta, model.spec.tta).spec()  # by default the views it was evaluated with
    if model.views.enabled:
        print(f"test-time augmentation: probabilities averaged over {model.views.describe()} of each image")
    result = predict_files(model, files, cfg.batch_size, cfg.max_image_pixels)
    output = Path(cfg.output_dir)
    findings = model.findings(result.scores, cfg.operating_point)
    for path, scores, positives in zip(result.paths, result.scores, findings, strict=True):
        shown = ", ".join(positives) if positives else "none at or above their thresholds"
        print(f"{path}\n  findings: {shown}")
        print("  " + "  ".join(f"{p} {s:.3f}" for p, s in zip(model.pathologies, scores, strict=True)))
        if cfg.heatmaps and positives:
            for written in write_overlays(model, path, positives, output / "heatmaps"):
                print(f"  heatmap: {written}")
    if folder and result.paths:
        output.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(result.scores, columns=list(model.pathologies), index=result.paths)
        table.insert(0, "findings", ["|".join(f) for f in findings])
        table.rename_axis("image").to_csv(output / "predictions.csv", float_format="%.6f")
        print(f"\n{len(result.paths)} image(s) predicted; table: {output / 'predictions.csv'}")
    for reason in result.failures.values():
        print(f"cxr: error: {reason}", file=sys.stderr)
    return len(failures) + len(result.failures)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
@exit_on_user_error
def main(cfg: PredictConfig) -> None:
    announce("predict", cfg)
    if run(cfg):
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    sys.argv[1:] = model_alias(sys.argv[1:])
    run_command(main)
