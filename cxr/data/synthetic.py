"""A deterministic synthetic chest X-ray set written in the NIH ChestX-ray14 layout.

Labels follow NIH prevalence with realistic co-occurrence (a Gaussian copula over shared
"fluid", "infection", "lesion" and "chronic" factors, persistent across a patient's follow-ups);
each finding leaves its own visual trace in a chest-like image, scaled by `strength` and hidden
in `noise`, so that a model must learn something and AUC is informative rather than 1.0.
Because the output is the NIH layout, it goes through the same reader as the real data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cxr.data.boxes import BOX_FRAME
from cxr.data.labels import NIH_PATHOLOGIES, NIH_PREVALENCE, NO_FINDING
from cxr.data.nih import BBOX_FILE, BBOX_SPELLING

if TYPE_CHECKING:
    from cxr.config import SyntheticGeneratorConfig  # a type only: config sits above data

MANIFEST = "generator.json"
# the findings NIH's box file covers; the generator boxes the same ones, where it drew them
BOX_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)

# Which latent factor each disease loads on besides the shared one.
_FACTOR_OF = {
    "Cardiomegaly": "fluid",
    "Effusion": "fluid",
    "Edema": "fluid",
    "Atelectasis": "fluid",
    "Pneumonia": "infection",
    "Consolidation": "infection",
    "Infiltration": "infection",
    "Mass": "lesion",
    "Nodule": "lesion",
    "Emphysema": "chronic",
    "Fibrosis": "chronic",
    "Pleural_Thickening": "chronic",
    "Pneumothorax": "chronic",
    "Hernia": "none",
}
_FACTORS = ("fluid", "infection", "lesion", "chronic")
_SHARED_LOADING = 0.35
_FACTOR_LOADING = 0.75


def _settings(cfg: SyntheticGeneratorConfig) -> dict:
    """The generator settings as a plain dict, from the dataclass or from Hydra's DictConfig alike."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def fingerprint(cfg: SyntheticGeneratorConfig) -> str:
    settings = _settings(cfg)
    if settings.get("ap_noise", 1.0) == 1.0:  # no planted view effect: the fingerprint sets had before it
        settings.pop("ap_noise", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def view_noise(cfg: SyntheticGeneratorConfig, view: str) -> float:
    """The planted subgroup effect: AP images carry `ap_noise` times the noise (harder to read)."""
    return float(getattr(cfg, "ap_noise", 1.0)) if view == "AP" else 1.0


def prevalences(min_prevalence: float) -> np.ndarray:
    return np.array([max(NIH_PREVALENCE[d], min_prevalence) for d in NIH_PATHOLOGIES])


def _latent(rng: np.random.Generator, n: int) -> np.ndarray:
    """Standard-normal latents with the co-occurrence structure, one row per draw."""
    shared = rng.standard_normal((n, 1))
    factors = {f: rng.standard_normal((n, 1)) for f in _FACTORS}
    own = rng.standard_normal((n, len(NIH_PATHOLOGIES)))
    cols = []
    for k, disease in enumerate(NIH_PATHOLOGIES):
        factor = _FACTOR_OF[disease]
        b = _FACTOR_LOADING if factor != "none" else 0.0
        z = _SHARED_LOADING * shared[:, 0] + (b * factors[factor][:, 0] if b else 0.0) + own[:, k]
        cols.append(z / np.sqrt(_SHARED_LOADING**2 + b**2 + 1.0))
    return np.stack(cols, axis=1)


def sample_metadata(cfg: SyntheticGeneratorConfig) -> pd.DataFrame:
    """One row per image in the official Data_Entry_2017 columns, plus the 0/1 label matrix."""
    rng = np.random.default_rng([cfg.seed, 0])
    n_images = 1 + rng.poisson(max(cfg.mean_images_per_patient - 1.0, 0.0), size=cfg.n_patients)
    patient_of_image = np.repeat(np.arange(cfg.n_patients), n_images)
    followup = np.concatenate([np.arange(k) for k in n_images])
    r = cfg.followup_correlation
    z = np.sqrt(r) * _latent(rng, cfg.n_patients)[patient_of_image] + np.sqrt(1 - r) * _latent(
        rng, len(patient_of_image)
    )
    from scipy.stats import norm  # scipy only to generate a set (1 s of imports), not to read one

    thresholds = norm.ppf(1.0 - prevalences(cfg.min_prevalence))
    labels = (z > thresholds).astype(np.uint8)

    age = np.clip(rng.normal(47, 17, cfg.n_patients), 1, 95).astype(int)[patient_of_image] + followup // 4
    sex = np.where(rng.random(cfg.n_patients) < 0.565, "M", "F")[patient_of_image]
    view = np.where(rng.random(len(patient_of_image)) < 0.6, "PA", "AP")
    patient_id = patient_of_image + 1
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(patient_id, followup, strict=True)]
    findings = [
        "|".join(d for d, y in zip(NIH_PATHOLOGIES, row, strict=True) if y) or NO_FINDING for row in labels
    ]
    return pd.DataFrame(
        {
            "Image Index": names,
            "Finding Labels": findings,
            "Follow-up #": followup,
            "Patient ID": patient_id,
            "Patient Age": age,
            "Patient Gender": sex,
            "View Position": view,
            "OriginalImage[Width": cfg.resolution,
            "Height]": cfg.resolution,
            "OriginalImagePixelSpacing[x": round(0.143 * 1024 / cfg.resolution, 4),
            "y]": round(0.143 * 1024 / cfg.resolution, 4),
        }
    ), labels


# ------------------------------------------------------------------ rendering
class _Canvas:
    """Normalised coordinates on an R x R grid; shapes add intensity in [0, 1] units."""

    def __init__(self, resolution: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.n = resolution
        coords = (np.arange(resolution) + 0.5) / resolution
        self.y, self.x = np.meshgrid(coords, coords, indexing="ij")
        self.img = np.zeros((resolution, resolution), dtype=np.float64)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, soft: float = 0.01) -> np.ndarray:
        d = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return np.clip((1.0 - d) / max(soft / min(rx, ry), 1e-6), 0.0, 1.0)

    def blob(self, cx: float, cy: float, sigma: float) -> np.ndarray:
        return np.exp(-(((self.x - cx) ** 2 + (self.y - cy) ** 2) / (2 * sigma**2)))

    def extent(self, finding: str, trace: np.ndarray, floor: float = 0.05) -> Place | None:
        """Where `trace` exceeds `floor`: the pixels' outer edges, or None where it never does."""
        rows, cols = np.nonzero(trace > floor)
        if not len(rows):
            return None
        return (
            finding,
            cols.min() / self.n,
            rows.min() / self.n,
            (cols.max() + 1) / self.n,
            (rows.max() + 1) / self.n,
        )

    def texture(self, sigma_px: float) -> np.ndarray:
        from scipy.ndimage import gaussian_filter  # scipy only to generate a set, as above

        t = gaussian_filter(self.rng.standard_normal((self.n, self.n)), sigma_px)
        return t / (t.std() + 1e-9)


def render(
    labels: np.ndarray,
    resolution: int,
    strength: float,
    noise: float,
    seed: list[int],
    places: list[Place] | None = None,
) -> np.ndarray:
    """A chest-like grey image (uint8) showing the trace of each positive label.

    `places`, when given, receives (finding, x0, y0, x1, y1) in [0, 1] image coordinates: where each of
    NIH's 8 boxed findings was drawn (`BOX_FINDINGS`), one entry per drawn region.
    """

    def mark(place: Place | None) -> None:
        if places is not None and place is not None:
            places.append(place)

    rng = np.random.default_rng(seed)
    c = _Canvas(resolution, rng)
    pos = dict(zip(NIH_PATHOLOGIES, labels.astype(bool), strict=True))
    s = strength
    jx, jy = rng.normal(0, 0.015, 2)
    u = rng.uniform
    contrast, brightness = u(0.85, 1.15), u(-0.06, 0.06)
    weak = min(s, 1.0)  # for traces that remove structure rather than add intensity

    emph = pos["Emphysema"]
    lung_ry = 0.30 * (1.0 + 0.10 * s * emph) * u(0.95, 1.05)
    lungs = []
    for side, cx in ((-1, 0.30), (1, 0.70)):
        lungs.append((side, cx + jx + side * u(-0.01, 0.01), 0.45 + jy, 0.16 * u(0.93, 1.07), lung_ry))

    thorax = c.ellipse(0.5 + jx, 0.55 + jy, 0.46, 0.5, soft=0.05)
    img = 0.08 + 0.47 * thorax
    lung_mask = np.zeros_like(img)
    for _, cx, cy, rx, ry in lungs:
        lung_mask = np.maximum(lung_mask, c.ellipse(cx, cy, rx, ry, soft=0.03))
    markings = 0.05 * c.texture(1.2) * (1.0 - 0.6 * weak * emph)
    img = img - lung_mask * (0.28 + 0.10 * s * emph) + lung_mask * markings
    ribs = 0.025 * np.sin(2 * np.pi * (c.y * 9 + 0.8 * np.abs(c.x - 0.5)))
    img += lung_mask * ribs

    heart_w = 0.13 * (1.0 + 0.38 * s * pos["Cardiomegaly"]) * u(0.92, 1.08)
    heart_h = 0.12 * u(0.93, 1.07)
    img += 0.30 * c.ellipse(0.53 + jx, 0.64 + jy, heart_w, heart_h, soft=0.02)
    if pos["Cardiomegaly"]:
        mark(_around("Cardiomegaly", 0.53 + jx, 0.64 + jy, heart_w, heart_h))
    img += 0.22 * c.ellipse(0.5 + jx, 0.3 + jy, 0.045, 0.25, soft=0.02) * (1 - lung_mask)

    def lung(which: int | None = None):
        return lungs[rng.integers(2) if which is None else which]

    if pos["Atelectasis"]:
        _, cx, cy, rx, ry = lung()
        ang = u(-0.35, 0.35)
        yc = cy + ry * u(0.2, 0.55)
        d = np.abs((c.y - yc) * np.cos(ang) - (c.x - cx) * np.sin(ang))
        band = np.exp(-((d / 0.012) ** 2)) * (np.abs(c.x - cx) < rx * 0.8)
        img += 0.28 * s * band * lung_mask
        mark(_around("Atelectasis", cx, yc, rx * 0.8, rx * 0.8 * abs(np.sin(ang)) + 0.03))
    if pos["Effusion"]:
        for idx in rng.permutation(2)[: rng.integers(1, 3)]:
            side, cx, cy, rx, ry = lungs[idx]
            surface = cy + ry * u(0.45, 0.7)
            level = surface - 0.12 * np.abs(c.x - cx) * side * np.sign(c.x - cx)
            fluid = np.clip((c.y - level) / 0.02, 0, 1)
            img += 0.30 * s * fluid * lung_mask
            for half in (c.x < 0.5 + jx, c.x >= 0.5 + jx):  # the tilted level can reach the other lung too
                mark(c.extent("Effusion", fluid * lung_mask * half))
    if pos["Infiltration"]:
        _, cx, cy, rx, ry = lung()
        centres = []
        for _ in range(rng.integers(5, 10)):
            centres.append((cx + u(-0.7, 0.7) * rx, cy + u(-0.6, 0.7) * ry))
            img += 0.10 * s * c.blob(*centres[-1], 0.025) * lung_mask
        (x0, y0), (x1, y1) = np.min(centres, axis=0), np.max(centres, axis=0)
        mark(("Infiltration", x0 - 0.05, y0 - 0.05, x1 + 0.05, y1 + 0.05))
    if pos["Mass"]:
        _, cx, cy, rx, ry = lung()
        mass = (cx + u(-0.5, 0.5) * rx, cy + u(-0.5, 0.5) * ry, u(0.05, 0.07), u(0.05, 0.07))
        img += 0.32 * s * c.ellipse(*mass)
        mark(_around("Mass", *mass))
    if pos["Nodule"]:
        _, cx, cy, rx, ry = lung()
        r = u(0.015, 0.025)
        nodule = (cx + u(-0.6, 0.6) * rx, cy + u(-0.6, 0.6) * ry, r, r)
        img += 0.38 * s * c.ellipse(*nodule, soft=0.005)
        mark(_around("Nodule", *nodule))
    if pos["Pneumonia"]:
        _, cx, cy, rx, ry = lung()
        centre = (cx + u(-0.3, 0.3) * rx, cy + u(0.0, 0.5) * ry)
        img += 0.22 * s * c.blob(*centre, 0.065) * lung_mask
        mark(_around("Pneumonia", *centre, 0.13, 0.13))
    if pos["Pneumothorax"]:
        side, cx, cy, rx, ry = lung()
        edge = cx + side * rx * u(0.45, 0.65)
        rim = (side * (c.x - edge) > 0) * (c.y < cy + ry * 0.3) * lung_mask
        img -= rim * (weak * (markings + ribs) + 0.12 * s)
        img += 0.25 * s * np.exp(-(((c.x - edge) / 0.006) ** 2)) * (c.y < cy + ry * 0.3) * lung_mask
        x0, x1 = sorted((edge - side * 0.01, cx + side * rx))
        mark(("Pneumothorax", x0, cy - ry, x1, cy + ry * 0.3))
    if pos["Consolidation"]:
        _, cx, cy, rx, ry = lung()
        img += (
            0.30
            * s
            * c.ellipse(cx + u(-0.3, 0.3) * rx, cy + u(0.1, 0.5) * ry, 0.08, 0.06, soft=0.006)
            * lung_mask
        )
    if pos["Edema"]:
        for _, cx, cy, _, _ in lungs:
            img += 0.18 * s * c.blob((cx + 0.5) / 2, cy + 0.03, 0.08) * lung_mask
    if pos["Fibrosis"]:
        reticular = np.clip(c.texture(0.6), 0, None)
        img += 0.12 * s * reticular * lung_mask * (c.y > 0.45 + jy)
    if pos["Pleural_Thickening"]:
        side, cx, cy, rx, ry = lung()
        d = np.sqrt(((c.x - cx) / rx) ** 2 + ((c.y - cy) / ry) ** 2)
        img += 0.30 * s * np.exp(-(((d - 0.97) / 0.04) ** 2)) * (side * (c.x - cx) > 0) * (c.y < cy)
    if pos["Hernia"]:
        cx, cy = 0.5 + jx + u(-0.03, 0.03), 0.78 + jy
        img += 0.30 * s * c.ellipse(cx, cy, 0.06, 0.05) - 0.25 * s * c.ellipse(cx, cy - 0.01, 0.03, 0.02)

    img = img * contrast + brightness
    img += noise * rng.standard_normal(img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


Place = tuple[str, float, float, float, float]  # finding, x0, y0, x1, y1 in [0, 1] image coordinates


def _around(finding: str, cx: float, cy: float, rx: float, ry: float) -> Place:
    """The place of a shape centred at (cx, cy) with half-widths rx, ry."""
    return finding, cx - rx, cy - ry, cx + rx, cy + ry


# ------------------------------------------------------------------ writing
def _official_lists(meta: pd.DataFrame, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng([seed, 1])
    patients = meta["Patient ID"].unique()
    n_test = int(round(len(patients) * test_fraction))
    test_patients = set(rng.permutation(patients)[:n_test].tolist())
    is_test = meta["Patient ID"].isin(test_patients)
    return sorted(meta.loc[~is_test, "Image Index"]), sorted(meta.loc[is_test, "Image Index"])


def write_dataset(cfg: SyntheticGeneratorConfig, folder: Path) -> None:
    meta, labels = sample_metadata(cfg)
    images = folder / "images"
    images.mkdir(parents=True)
    places: list[list[Place]] = []
    for i, (name, row) in enumerate(
        tqdm(
            zip(meta["Image Index"], labels, strict=True),
            total=len(meta),
            desc="synthetic images",
            unit="img",
        )
    ):
        places.append([])
        noise = cfg.noise * view_noise(cfg, meta["View Position"].iat[i])
        pixels = render(row, cfg.resolution, cfg.strength, noise, [cfg.seed, 2, i], places[-1])
        Image.fromarray(pixels, mode="L").save(images / name)
    meta.to_csv(folder / "Data_Entry_2017.csv", index=False)
    train_val, test = _official_lists(meta, cfg.test_fraction, cfg.seed)
    (folder / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (folder / "test_list.txt").write_text("\n".join(test) + "\n")
    boxed = _boxed_images(test, cfg.box_share, cfg.seed)
    box_table(meta["Image Index"], places, boxed).to_csv(folder / BBOX_FILE, index=False)


def _boxed_images(test: list[str], share: float, seed: int) -> set[str]:
    """A random `share` of the test images, those whose drawn findings get boxes (as NIH boxed 880 of
    its 25,596 test images)."""
    rng = np.random.default_rng([seed, 3])
    return set(np.asarray(test)[rng.random(len(test)) < share].tolist())


def box_table(names: pd.Series, places: list[list[Place]], boxed: set[str]) -> pd.DataFrame:
    """`BBox_List_2017.csv` as NIH writes it (its spelling, its header, 1024 px coordinates) for the
    `boxed` images' drawn findings, each place clipped to the image."""
    spelling = {v: k for k, v in BBOX_SPELLING.items()}
    rows = []
    for name, drawn in zip(names, places, strict=True):
        for finding, x0, y0, x1, y1 in drawn if name in boxed else ():
            (x0, x1), (y0, y1) = np.clip([x0, x1], 0, 1) * BOX_FRAME, np.clip([y0, y1], 0, 1) * BOX_FRAME
            rows.append((name, spelling.get(finding, finding), x0, y0, x1 - x0, y1 - y0))
    return pd.DataFrame(rows, columns=["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"])


def ensure_dataset(cfg: SyntheticGeneratorConfig, root: str | os.PathLike) -> Path:
    """Generate the set once; later calls with the same settings reuse it (cached by fingerprint)."""
    root = Path(root)
    folder = root / f"synthetic-{fingerprint(cfg)}"
    manifest = folder / MANIFEST
    if manifest.is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_dataset(cfg, tmp)
        (tmp / MANIFEST).write_text(json.dumps(_settings(cfg), indent=2, sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not manifest.is_file():  # another process did not finish it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
