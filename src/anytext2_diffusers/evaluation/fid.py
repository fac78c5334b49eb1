"""Fréchet Inception Distance between a folder of generated images and a reference folder.

Protocol (AnyText2 ``eval/eval_fid.sh``: ``python -m pytorch_fid REF_DIR GEN_DIR``): every image file
of each folder, loaded as RGB in [0, 1], fed to pytorch-fid's FID InceptionV3 (TF-ported
``pt_inception-2015-12-05`` weights), which resizes to 299x299 (bilinear) and maps to [-1, 1]; the
2048-d pool3 features give a Gaussian (mean, covariance) per folder and

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

The trace of the matrix square root is computed from the eigenvalues of the symmetric PSD matrix
``S1^(1/2) S2 S1^(1/2)`` (same value as scipy's ``sqrtm(S1 @ S2)`` used by pytorch-fid, without its
complex round-off). The feature extractor is pluggable: any callable ``(N, 3, H, W) float in [0, 1] ->
(N, D)``; the default needs ``pip install pytorch-fid`` and its Inception weights, which it downloads
once into the torch hub cache (offline: put ``pt_inception-2015-12-05-6726825d.pth`` there or pass
``inception_weights``). FID values are only comparable with the same extractor and weights.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .benchmark import BenchmarkError

FeatureExtractor = Callable[[torch.Tensor], "torch.Tensor | np.ndarray"]
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")  # pytorch-fid's


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (covariances symmetric PSD)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of (N, D) features, N >= 2 (covariance with N - 1, as numpy/pytorch-fid)."""
    feats = np.asarray(features, np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need an (N >= 2, D) feature matrix, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_from_features(features1, features2) -> float:
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def fid_image_paths(folder: str | Path) -> list[Path]:
    """The files pytorch-fid reads from a folder: its image extensions, directly inside, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FID_IMAGE_EXTENSIONS)


@torch.no_grad()
def extract_features(
    paths: Sequence[Path], extractor: FeatureExtractor, batch_size: int = 50, device="cpu", progress: bool = False
) -> np.ndarray:
    """Features of image files (RGB in [0, 1], CHW), batched; consecutive images of one size share a batch."""
    out, batch, size = [], [], None

    def flush():
        if batch:
            feats = extractor(torch.stack(batch).to(device))
            feats = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
            out.append(feats.reshape(len(batch), -1).astype(np.float64))
            batch.clear()

    iterator = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="fid features", unit="img")
    for path in iterator:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except OSError as err:
            raise BenchmarkError(f"cannot read image {path}: {err}") from None
        if size is not None and (arr.shape != size or len(batch) >= batch_size):
            flush()
        size = arr.shape
        batch.append(torch.from_numpy(arr).permute(2, 0, 1))
    flush()
    return np.concatenate(out) if out else np.zeros((0, 0))


@contextlib.contextmanager
def _hub_dir_with(weights: Path):
    """A temporary torch hub dir holding ``weights`` under the name pytorch-fid asks for (no download)."""
    previous = torch.hub.get_dir()
    tmp = tempfile.mkdtemp()
    try:
        (Path(tmp) / "checkpoints").mkdir()
        target = Path(tmp) / "checkpoints" / FID_WEIGHTS_FILE
        try:
            os.symlink(Path(weights).resolve(), target)
        except OSError:
            shutil.copyfile(weights, target)
        torch.hub.set_dir(tmp)
        yield
    finally:
        torch.hub.set_dir(previous)
        shutil.rmtree(tmp, ignore_errors=True)


def pytorch_fid_inception(dims: int = 2048, inception_weights: str | Path | None = None, device="cpu"):
    """pytorch-fid's FID InceptionV3 as a feature extractor ``(N, 3, H, W) in [0, 1] -> (N, dims)``."""
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError as err:
        raise BenchmarkError(
            f"the default FID feature extractor needs pytorch-fid ({err}): pip install pytorch-fid, or pass "
            "a feature extractor callable to evaluate_fid"
        ) from None
    block = InceptionV3.BLOCK_INDEX_BY_DIM[dims]
    if inception_weights is not None:
        if not Path(inception_weights).is_file():
            raise BenchmarkError(f"--inception_weights {inception_weights}: file not found")
        with _hub_dir_with(Path(inception_weights)):
            model = InceptionV3([block])
    else:
        model = InceptionV3([block])  # weights from the torch hub cache (downloaded once if online)
    model = model.to(device).eval()

    def extract(images: torch.Tensor) -> torch.Tensor:
        pred = model(images)[0]
        if pred.shape[2:] != (1, 1):
            pred = torch.nn.functional.adaptive_avg_pool2d(pred, (1, 1))
        return pred.flatten(1)

    return extract


def folder_statistics(
    source: str | Path, extractor: FeatureExtractor, batch_size: int = 50, device="cpu", progress: bool = False
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, n_images) of a folder, or of a ``.npz`` with ``mu``/``sigma`` (pytorch-fid's ``--save-stats``)."""
    source = Path(source)
    if source.suffix == ".npz":
        if not source.is_file():
            raise BenchmarkError(f"FID statistics file not found: {source}")
        with np.load(source) as data:
            if "mu" not in data or "sigma" not in data:
                raise BenchmarkError(f"{source}: FID statistics need arrays 'mu' and 'sigma'")
            return data["mu"], data["sigma"], int(data["n"]) if "n" in data else -1
    paths = fid_image_paths(source)
    if len(paths) < 2:
        raise BenchmarkError(f"{source}: FID needs at least 2 images, found {len(paths)}")
    feats = extract_features(paths, extractor, batch_size, device, progress)
    mu, sigma = feature_statistics(feats)
    return mu, sigma, len(paths)


def evaluate_fid(
    images_dir: str | Path,
    reference: str | Path,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    device="cpu",
    save_reference_stats: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """FID of the images in ``images_dir`` against ``reference`` (folder or ``.npz`` statistics)."""
    name = "custom"
    if extractor is None:
        extractor, name = pytorch_fid_inception(device=device), "pytorch-fid InceptionV3 pool3 (2048)"
    mu_r, sigma_r, n_r = folder_statistics(reference, extractor, batch_size, device, progress)
    if save_reference_stats is not None:
        np.savez(save_reference_stats, mu=mu_r, sigma=sigma_r, n=n_r)
    mu_g, sigma_g, n_g = folder_statistics(images_dir, extractor, batch_size, device, progress)
    return {
        "metric": "fid",
        "fid": frechet_distance(mu_g, sigma_g, mu_r, sigma_r),
        "images": str(images_dir),
        "reference": str(reference),
        "images_scored": n_g,
        "reference_images": n_r,
        "feature_extractor": name,
    }
