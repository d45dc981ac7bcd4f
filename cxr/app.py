"""`python -m cxr.app model=models:/NAME@champion`: a web page and an API on one model, for people.

Loads the model once, reads who it is from the registry and its run, and serves the page, `POST
/api/predict`, `POST /api/gradcam`, `GET /api/model`, `GET /healthz` and `/docs` with uvicorn on
`host:port` (127.0.0.1:8000) until Ctrl-C. `model` is any model URI cxr.predict takes, or a local
model folder. docs/app.md has the page, the API and the limits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra

from cxr.config import CONF_DIR, AppConfig, check_app, register_configs
from cxr.runtime.argv import model_alias
from cxr.runtime.console import announce, log
from cxr.runtime.errors import CxrError, exit_on_user_error, run_command

register_configs()
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MB = 1024 * 1024


def build(cfg: AppConfig):
    """The FastAPI app `cfg` describes, its model loaded: what `serve` runs and tests start."""
    check_app(cfg)
    # heavy (MLflow, Keras, FastAPI): after the checks
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxr.serving import pyfunc
    from cxr.serving.app.identity import DEFAULT_POINT, describe, report_card
    from cxr.serving.app.server import Settings, create_app
    from cxr.serving.app.uploads import Limits

    mlflow.set_tracking_uri(cfg.tracking.uri)
    uri = cfg.model_uri
    local = Path(uri).expanduser().is_dir()
    model = pyfunc.load(uri, cfg.tracking.trusted_imports)
    client = None if local else MlflowClient(cfg.tracking.uri)
    identity = describe(model, uri, client, cfg.mlflow_ui)
    point = cfg.operating_point or DEFAULT_POINT
    if point not in identity.operating_points:
        raise CxrError(f"operating_point={point!r}: {uri} has {', '.join(identity.operating_points)}")
    settings = Settings(
        limits=Limits(int(cfg.max_file_mb * MB), cfg.max_files, cfg.max_pixels),
        token=cfg.token,
        batch_size=cfg.batch_size,
        batch_wait_ms=cfg.batch_wait_ms,
        keep_uploads=Path(cfg.keep_uploads) if cfg.keep_uploads else None,
        operating_point=point,
        preview_px=cfg.preview_px,
    )
    return create_app(model, identity, settings, report_card(client, identity.run_id) if client else None)


def url(cfg: AppConfig) -> str:
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"http://{host}:{cfg.port}/"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="app")
@exit_on_user_error
def main(cfg: AppConfig) -> None:
    announce("app", cfg)
    import uvicorn

    app = build(cfg)
    if cfg.host not in LOCAL_HOSTS:
        log.warning(
            f"host={cfg.host}: the page is reachable from other machines over plain HTTP (no TLS); "
            "put it behind a TLS proxy and set a token (CXR_APP_TOKEN)"
        )
    print(f"cxr.app: {cfg.model_uri} at {url(cfg)} (API docs {url(cfg)}docs); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


if __name__ == "__main__":
    sys.argv[1:] = model_alias(sys.argv[1:])
    run_command(main)
