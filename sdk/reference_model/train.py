"""Train the reference chest-CT nodule model on phantom data and export it to ONNX.

The reference model is what the demo, the quantization toolchain and the
benchmarks run when a device maker has not brought their own: a small but real
CNN (conv, batch-norm, residual blocks, pooling, a fully connected layer)
with two heads, the probability that a slice shows a lung nodule and a rough
normalised ``(row, column)`` of it.

Training data are phantom series from :mod:`sdk.testing.phantom`, turned into
tensors by :func:`sdk.preprocessing.preprocess`, the same function the
calibration and the runtime call. Run::

    python -m sdk.reference_model.train --out sdk/reference_model [--seed N] [--epochs N]

It writes ``chest-ct-nodule.onnx``, ``model.toml`` (with the operating
threshold chosen on a validation set) and ``training_record.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdk.model_config import load_model_config
from sdk.preprocess_spec import Normalization, PreprocessSpec, Window
from sdk.preprocessing import preprocess
from sdk.testing.phantom import PhantomSpec, SliceTruth, generate_series

logger = logging.getLogger(__name__)

MODEL_NAME = "chest-ct-nodule"
MODEL_VERSION = "1.0.0"
ONNX_FILE = f"{MODEL_NAME}.onnx"
INPUT_NAME = "image"
SCORES_NAME = "nodule_probability"
LOCATION_NAME = "nodule_location"
IMAGE_SIZE = 256
MAP_SIZE = 32  # the evidence map's resolution: one cell per 8x8 input pixels
PREPROCESSING = PreprocessSpec(
    modalities=["CT"],
    rescale=True,
    window=Window(center=-600.0, width=1500.0),
    size=(IMAGE_SIZE, IMAGE_SIZE),
    normalization=Normalization(mode="unit"),
    channels=1,
    layout="NCHW",
)
PHANTOM = PhantomSpec()


# ----------------------------------------------------------------------------- model


class ConvBNReLU(nn.Sequential):
    """3x3 convolution, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class NoduleNet(nn.Module):
    """A fully convolutional evidence map with a probability and a location read from it.

    The backbone reduces a 256x256 slice to a 32x32 map of nodule logits (one
    cell per 8x8 pixels). The probability comes from a fully connected layer
    over the map's global max (the strongest evidence anywhere) and the
    features' global average (context); the location is the soft-argmax of
    the map, a normalised ``(row, column)`` of pixel centres.
    """

    grid: torch.Tensor  # (MAP_SIZE**2, 2) normalised (row, column) of the map's cell centres

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU(1, 24, stride=2),
            ConvBNReLU(24, 32, stride=2),
            ResidualBlock(32, 32),
            ResidualBlock(32, 64, stride=2),
            ResidualBlock(64, 64),
            ResidualBlock(64, 64, dilation=2),
        )
        self.evidence = nn.Sequential(ConvBNReLU(64, 32), nn.Conv2d(32, 1, 1))
        self.classifier = nn.Linear(65, 1)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[0, 0] = 1.0
            self.classifier.bias.zero_()
        centres = (torch.arange(MAP_SIZE, dtype=torch.float32) + 0.5) / MAP_SIZE
        rows, cols = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("grid", torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1), persistent=False)
        self.location_sharpness = 4.0

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logit, evidence map logits ``(N, 1, 32, 32)`` and location ``(N, 2)``."""
        feats = self.features(x)
        evidence = self.evidence(feats)
        pooled = torch.cat(
            [torch.flatten(F.adaptive_max_pool2d(evidence, 1), 1), torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)],
            dim=1,
        )
        logit = self.classifier(pooled)
        flat = torch.flatten(evidence, 1)
        if flat.dtype != torch.float32:  # bfloat16 under autocast; a softmax over 1024 cells wants float32
            flat = flat.float()
        weights = torch.softmax(flat * self.location_sharpness, dim=1)
        location = weights @ self.grid
        return logit, evidence, location

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probability ``(N, 1)`` and normalised location ``(N, 2)``: what the ONNX model outputs."""
        logit, _, location = self.forward_train(x)
        return torch.sigmoid(logit), location


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of one 256x256 slice, counted over conv and linear layers."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return total


# ----------------------------------------------------------------------------- data


@dataclass
class SliceSet:
    """Preprocessed slices with labels and targets.

    Attributes:
        images: ``(N, 1, 256, 256)`` float16 (training) or float32 (evaluation).
        labels: 1 when the slice shows a nodule.
        grazing: a nodule touches the slice below the visibility radius (labelled 0).
        locations: normalised ``(row, column)`` of the largest visible nodule (NaN if none).
        maps: ``(N, 32, 32)`` evidence targets: cells near a visible nodule's centre.
    """

    images: np.ndarray
    labels: np.ndarray
    grazing: np.ndarray
    locations: np.ndarray
    maps: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _targets(truth: SliceTruth, rows: int, cols: int, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Location target (largest visible nodule) and evidence-map target of one slice."""
    location = np.full(2, np.nan, np.float32)
    target = np.zeros((MAP_SIZE, MAP_SIZE), np.uint8)
    if truth.nodules:
        location[:] = ((truth.nodules[0].row + 0.5) / rows, (truth.nodules[0].column + 0.5) / cols)
    cell_r, cell_c = rows / MAP_SIZE, cols / MAP_SIZE  # source pixels per map cell
    centres = np.arange(MAP_SIZE) + 0.5
    for nod in truth.nodules:
        dr = centres[:, None] * cell_r - (nod.row + 0.5)
        dc = centres[None, :] * cell_c - (nod.column + 0.5)
        reach = max(0.8 * nod.radius_mm / spacing_mm, 0.72 * max(cell_r, cell_c))
        target |= (np.hypot(dr, dc) <= reach).astype(np.uint8)
    return location, target


def build_set(seeds: list[int], *, balanced: bool, rng: np.random.Generator, keep_negative: float = 0.4) -> SliceSet:
    """Render phantom series and preprocess their slices.

    With ``balanced`` the set keeps every positive slice, drops grazing ones
    and subsamples negatives to the same count (training). Otherwise it keeps
    every slice as it comes (evaluation, the natural mix).
    """
    images, labels, grazing, locations, maps = [], [], [], [], []
    for seed in seeds:
        series = generate_series(PHANTOM, seed=seed)
        for ds, truth in zip(series.datasets, series.truth.slices, strict=True):
            if balanced and (truth.grazing or (not truth.has_nodule and rng.random() > keep_negative)):
                continue
            tensor = preprocess(ds, PREPROCESSING)[0]
            images.append(tensor.astype(np.float16) if balanced else tensor.astype(np.float32))
            labels.append(int(truth.has_nodule))
            grazing.append(truth.grazing)
            location, target = _targets(truth, series.truth.rows, series.truth.columns, series.truth.pixel_spacing_mm)
            locations.append(location)
            maps.append(target)
    out = SliceSet(
        images=np.stack(images),
        labels=np.array(labels, np.int64),
        grazing=np.array(grazing, bool),
        locations=np.stack(locations),
        maps=np.stack(maps),
    )
    if balanced:
        positives, negatives = np.flatnonzero(out.labels == 1), np.flatnonzero(out.labels == 0)
        n = min(len(positives), len(negatives))
        keep = np.sort(
            np.concatenate([rng.choice(positives, n, replace=False), rng.choice(negatives, n, replace=False)])
        )
        out = SliceSet(out.images[keep], out.labels[keep], out.grazing[keep], out.locations[keep], out.maps[keep])
    return out


def _augment(
    images: torch.Tensor, maps: torch.Tensor, locations: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-right flips and shifts by whole map cells, so the targets move exactly with the image."""
    if rng.random() < 0.5:
        images, maps = images.flip(-1), maps.flip(-1)
        locations = torch.stack([locations[:, 0], 1 - locations[:, 1]], dim=1)
    cell = IMAGE_SIZE // MAP_SIZE
    dr, dc = (int(v) for v in rng.integers(-2, 3, size=2))
    images = torch.roll(images, shifts=(dr * cell, dc * cell), dims=(-2, -1))
    maps = torch.roll(maps, shifts=(dr, dc), dims=(-2, -1))
    locations = locations + torch.tensor([dr / MAP_SIZE, dc / MAP_SIZE])
    return images, maps, locations


# ----------------------------------------------------------------------------- training and evaluation


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U), ties counted half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return math.nan
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(model: NoduleNet, data: SliceSet, *, epochs: int, batch: int, seed: int) -> list[dict[str, float]]:
    """Train in bfloat16 autocast with channels-last tensors; returns per-epoch losses."""
    rng = np.random.default_rng(seed)
    model.train()
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's stubs
    steps = epochs * math.ceil(len(data) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        order = rng.permutation(len(data))
        sums = {"loss": 0.0, "cls": 0.0, "map": 0.0, "loc": 0.0}
        for first in range(0, len(order), batch):
            index = np.sort(order[first : first + batch])
            images = torch.from_numpy(data.images[index].astype(np.float32))
            maps = torch.from_numpy(data.maps[index].astype(np.float32))[:, None]
            locations = torch.from_numpy(data.locations[index])
            images, maps, locations = _augment(images, maps, locations, rng)
            labels = torch.from_numpy(data.labels[index].astype(np.float32))[:, None]
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logit, evidence, location = model.forward_train(images)
            logit, evidence = logit.float(), evidence.float()
            cls_loss = F.binary_cross_entropy_with_logits(logit, labels)
            map_loss = F.binary_cross_entropy_with_logits(evidence, maps, pos_weight=torch.tensor(8.0))
            positive = labels[:, 0] > 0
            loc_loss = (
                F.smooth_l1_loss(location[positive], locations[positive], beta=0.02)
                if bool(positive.any())
                else torch.zeros(())
            )
            loss = cls_loss + map_loss + 10.0 * loc_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            n = len(index)
            for key, value in (("loss", loss), ("cls", cls_loss), ("map", map_loss), ("loc", loc_loss)):
                sums[key] += float(value.detach()) * n
        record = {key: round(value / len(data), 5) for key, value in sums.items()}
        record["seconds"] = round(time.perf_counter() - started, 1)
        history.append(record)
        logger.info("epoch %d/%d %s", epoch + 1, epochs, record)
    model.eval()
    return history


def predict(model: NoduleNet, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """FP32 probabilities ``(N,)`` and locations ``(N, 2)``."""
    model.eval()
    probs, locs = [], []
    with torch.no_grad():
        for first in range(0, len(images), batch):
            prob, loc = model(torch.from_numpy(np.ascontiguousarray(images[first : first + batch], np.float32)))
            probs.append(prob[:, 0].numpy())
            locs.append(loc.numpy())
    return np.concatenate(probs), np.concatenate(locs)


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising Youden's J (sensitivity + specificity - 1) on validation data."""
    best, best_j = 0.5, -1.0
    for threshold in np.unique(np.round(scores.astype(np.float64), 3)):
        predicted = scores >= threshold
        sens = float(predicted[labels == 1].mean())
        spec = float((~predicted[labels == 0]).mean())
        if sens + spec - 1 > best_j:
            best, best_j = round(float(threshold), 3), sens + spec - 1
    return best


def operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    predicted = scores >= threshold
    return {
        "sensitivity": round(float(predicted[labels == 1].mean()), 4),
        "specificity": round(float((~predicted[labels == 0]).mean()), 4),
    }


def export_onnx(model: NoduleNet, path: Path, sample: np.ndarray) -> float:
    """Export in FP32 with a dynamic batch dimension; return the max |ORT - torch| on ``sample``."""
    import onnx
    import onnxruntime as ort

    model.eval()
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, but its graph is the
        # plainer one for quantizers (GlobalAveragePool/MaxPool, BatchNorm folded into Conv).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[SCORES_NAME, LOCATION_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, SCORES_NAME: {0: "N"}, LOCATION_NAME: {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    logger.info("ONNX ops: %s", sorted({node.op_type for node in graph.graph.node}))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = np.ascontiguousarray(sample, np.float32)
    ort_prob, ort_loc = session.run([SCORES_NAME, LOCATION_NAME], {INPUT_NAME: inputs})
    torch_prob, torch_loc = predict(model, inputs)
    diff = max(float(np.abs(ort_prob[:, 0] - torch_prob).max()), float(np.abs(ort_loc - torch_loc).max()))
    if diff > 1e-4:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> 1e-4)")
    return diff


def write_model_toml(path: Path, threshold: float) -> None:
    """Write ``model.toml`` for the exported model and check it loads."""
    window = PREPROCESSING.window
    assert isinstance(window, Window)
    path.write_text(
        f"""# The reference chest-CT nodule model. Written by `python -m sdk.reference_model.train`;
# the threshold is the Youden-optimal operating point on the validation phantoms.
name = "{MODEL_NAME}"
version = "{MODEL_VERSION}"
task = "classification"
description = "Lung nodule in an axial chest-CT slice; reference model trained on phantoms only, not for clinical use"
manufacturer = "medge"
labels = ["nodule"]

[thresholds]
nodule = {threshold:.3f}

[input]
name = "{INPUT_NAME}"
dtype = "float32"

[outputs]
scores = "{SCORES_NAME}"
score_kind = "probability"
location = "{LOCATION_NAME}"

[preprocessing]
modalities = ["CT"]
rescale = true
window = {{ center = {window.center:g}, width = {window.width:g} }}
invert_monochrome1 = true
size = [{IMAGE_SIZE}, {IMAGE_SIZE}]
normalization = {{ mode = "unit" }}
channels = 1
layout = "NCHW"

[gate]
min_agreement = 0.99
max_flip_rate = 0.01
max_auc_drop = 0.01
""",
        encoding="utf-8",
    )
    config = load_model_config(path)
    if config.preprocessing != PREPROCESSING:
        raise RuntimeError("model.toml preprocessing does not match the spec used for training")


def run(out: Path, *, seed: int, epochs: int, train_series: int, val_series: int, test_series: int) -> dict:
    """Generate data, train, evaluate, export; returns the training record."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    base = seed * 1_000_000
    t0 = time.perf_counter()
    train_set = build_set([base + i for i in range(train_series)], balanced=True, rng=rng)
    val_set = build_set([base + 300_000 + i for i in range(val_series)], balanced=False, rng=rng)
    test_set = build_set([base + 600_000 + i for i in range(test_series)], balanced=False, rng=rng)
    data_seconds = time.perf_counter() - t0
    logger.info(
        "data: %d training slices (%d positive), %d validation, %d held-out (%d positive) in %.0f s",
        len(train_set),
        int(train_set.labels.sum()),
        len(val_set),
        len(test_set),
        int(test_set.labels.sum()),
        data_seconds,
    )
    model = NoduleNet()
    macs = count_macs(model)
    params = sum(p.numel() for p in model.parameters())
    logger.info("model: %.3f GMAC per slice, %d parameters", macs / 1e9, params)
    t0 = time.perf_counter()
    history = train(model, train_set, epochs=epochs, batch=32, seed=seed)
    train_seconds = time.perf_counter() - t0

    val_prob, _ = predict(model, val_set.images)
    threshold = choose_threshold(val_set.labels, val_prob)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_FILE
    max_diff = export_onnx(model, onnx_path, test_set.images[:16])

    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    probs, locs = [], []
    for first in range(0, len(test_set), 64):
        prob, loc = session.run(None, {INPUT_NAME: test_set.images[first : first + 64]})
        probs.append(prob[:, 0])
        locs.append(loc)
    test_prob, test_loc = np.concatenate(probs), np.concatenate(locs)
    positives = test_set.labels == 1
    pixel_error = np.abs(test_loc[positives] - test_set.locations[positives]) * IMAGE_SIZE
    clean = ~test_set.grazing
    write_model_toml(out / "model.toml", threshold)
    import onnx

    record = {
        "model": {"name": MODEL_NAME, "version": MODEL_VERSION, "file": ONNX_FILE},
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "onnx_bytes": onnx_path.stat().st_size,
        "command": f"python -m sdk.reference_model.train --out {out} --seed {seed} --epochs {epochs}",
        "seed": seed,
        "series_seeds": {
            "train": [base, base + train_series - 1],
            "validation": [base + 300_000, base + 300_000 + val_series - 1],
            "held_out": [base + 600_000, base + 600_000 + test_series - 1],
        },
        "data": {
            "train_slices": len(train_set),
            "train_positive": int(train_set.labels.sum()),
            "validation_slices": len(val_set),
            "held_out_slices": len(test_set),
            "held_out_positive": int(positives.sum()),
            "held_out_grazing": int(test_set.grazing.sum()),
        },
        "phantom_spec": PHANTOM.model_dump(mode="json"),
        "preprocessing": PREPROCESSING.model_dump(mode="json"),
        "epochs": epochs,
        "batch": 32,
        "history": history,
        "macs_per_slice": macs,
        "parameters": params,
        "threshold": threshold,
        "held_out": {
            "auc": round(auc(test_set.labels, test_prob), 4),
            "auc_without_grazing_slices": round(auc(test_set.labels[clean], test_prob[clean]), 4),
            **operating_point(test_set.labels, test_prob, threshold),
            "location_median_error_px": round(float(np.median(np.hypot(*pixel_error.T))), 2),
            "evaluated_with": "onnxruntime CPUExecutionProvider, FP32",
        },
        "validation_auc": round(auc(val_set.labels, val_prob), 4),
        "onnx_vs_torch_max_abs_diff": max_diff,
        "wall_seconds": {
            "data": round(data_seconds, 1),
            "training": round(train_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "cpus_visible": os.cpu_count(),
            "architecture": platform.machine(),
            "bfloat16_autocast": True,
        },
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="where to write the model files")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-series", type=int, default=200)
    parser.add_argument("--val-series", type=int, default=20)
    parser.add_argument("--test-series", type=int, default=40)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    record = run(
        args.out,
        seed=args.seed,
        epochs=args.epochs,
        train_series=args.train_series,
        val_series=args.val_series,
        test_series=args.test_series,
    )
    logger.info(
        "held-out AUC %.4f, sensitivity %.3f, specificity %.3f at %.3f; %.0f s total",
        record["held_out"]["auc"],
        record["held_out"]["sensitivity"],
        record["held_out"]["specificity"],
        record["threshold"],
        record["wall_seconds"]["total"],
    )


if __name__ == "__main__":
    main()
