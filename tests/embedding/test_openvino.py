"""The OpenVINO backend: faithful to torch fp32 on real photos, a converted graph cached on disk
(reused, rebuilt when stale or damaged), and torch whenever OpenVINO cannot load or convert."""

from __future__ import annotations

import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from shoal.embedding import backends
from shoal.embedding.backends import (
    ConversionMismatch,
    OpenVINOEmbedder,
    TorchEmbedder,
    create_embedder,
    load_or_convert,
    openvino_available,
    resolve_backend,
    resolve_precision,
)
from shoal.embedding.extract import Preprocessing
from shoal.embedding.models import DataConfig, EmbeddingModel, ModelUnavailableError, create_model
from shoal.embedding.preprocess import load_image, resize_crop

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "tuxpaint"
PER_LABEL = 12  # about 90 real photos in 8 categories

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="needs OpenVINO on x86-64")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def knn_accuracy(vectors: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN (cosine) majority-vote accuracy; ties go to the nearer neighbours."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    votes = [Counter(labels[row]).most_common(1)[0][0] for row in nearest]
    return float(np.mean(np.array(votes) == labels))


def tiny_model() -> EmbeddingModel:
    """A small conv net that converts in a moment, for the cache and fallback tests."""
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
    )
    return EmbeddingModel(
        name="tiny",
        dim=8,
        features=features,
        head=None,
        data_config=DataConfig(input_size=(3, 32, 32)),
        feature_stride=4,
    ).eval()


class _FrozenSize(nn.Module):
    """Resizes to its input's own size, read as Python ints: a trace freezes them as constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(int(x.shape[2]), int(x.shape[3])))


def tiny_spatial_model(*, frozen: bool = False) -> EmbeddingModel:
    """A small conv net with a feature map (stride 4) and a pooling, as object embeddings need;
    ``frozen``: its map is only right at the traced size."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU()]
    spatial = nn.Sequential(*layers, *([_FrozenSize()] if frozen else []))
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return EmbeddingModel(
        name="tiny-map",
        dim=8,
        features=nn.Sequential(spatial, pool),
        head=None,
        data_config=DataConfig(input_size=(3, 32, 32)),
        feature_stride=4,
        spatial=spatial,
        pool=pool,
    ).eval()


@pytest.fixture(scope="module")
def labelled_photos() -> tuple[list[Path], np.ndarray]:
    """Up to PER_LABEL real photos per category of the bundled sample, and their labels."""
    by_label: dict[str, list[Path]] = {}
    for path in sorted(SAMPLE.glob("*/*/*")):
        by_label.setdefault(path.parent.name, []).append(path)
    files = [p for label in sorted(by_label) for p in by_label[label][:PER_LABEL]]
    return files, np.array([p.parent.name for p in files])


# --------------------------------------------------------------------------- fidelity


@needs_openvino
@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_default_precision_matches_torch_fp32_on_real_photos(name, labelled_photos, tmp_path):
    try:
        model = create_model(name)
    except ModelUnavailableError as error:
        pytest.skip(str(error))
    files, labels = labelled_photos
    pixels = np.stack([resize_crop(load_image(p), model.data_config) for p in files])
    reference = TorchEmbedder(create_model(name), precision="fp32").embed(pixels)

    embedder = create_embedder(model, backend="openvino", cache_dir=tmp_path)
    assert (embedder.backend, embedder.precision) == ("openvino", "fp32")
    vectors = np.concatenate([embedder.embed(pixels[i : i + 32]) for i in range(0, len(files), 32)])

    similarity = cosine(vectors, reference)
    assert similarity.mean() >= 0.999 and similarity.min() > 0.99, similarity.min()
    ours, theirs = knn_accuracy(vectors, labels), knn_accuracy(reference, labels)
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    assert theirs > 0.5  # the real photos do cluster by category

    # bf16 on request: faster, and close but below the default's bar (module docstring).
    fast = create_embedder(model, backend="openvino", precision="bf16", cache_dir=tmp_path)
    assert fast.precision == "bf16"
    assert cosine(fast.embed(pixels), reference).mean() > 0.99


# --------------------------------------------------------------------------- cache


@needs_openvino
def test_converted_graph_is_cached_and_reused(tmp_path):
    model, conversions = tiny_model(), []
    load_or_convert(model, tmp_path, on_convert=lambda: conversions.append(1))
    load_or_convert(model, tmp_path, on_convert=lambda: conversions.append(1))
    assert len(conversions) == 1
    [entry] = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    meta = json.loads((entry / "entry.json").read_text())
    assert meta["key"]["model"] == "tiny" and meta["key"]["input_size"] == [3, 32, 32]
    assert set(meta["files"]) == {"model.xml", "model.bin"}

    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    cached = OpenVINOEmbedder(model, cache_dir=tmp_path).embed(pixels)
    expected = TorchEmbedder(tiny_model(), precision="fp32").embed(pixels)
    np.testing.assert_allclose(cached, expected, rtol=1e-4, atol=1e-5)


@needs_openvino
def test_stale_or_damaged_cache_is_rebuilt_never_used(tmp_path, monkeypatch):
    model, conversions = tiny_model(), []

    def count() -> None:
        conversions.append(1)

    first = load_or_convert(model, tmp_path, on_convert=count)
    [entry] = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]

    # Damaged weights: the file hash no longer matches, so the entry is converted again.
    (entry / "model.bin").write_bytes(b"\0" * 16)
    load_or_convert(model, tmp_path, on_convert=count)
    assert len(conversions) == 2 and (entry / "model.bin").stat().st_size > 16

    # New weights: another key, another entry; the old one is never read for them.
    with torch.no_grad():
        model.features[0].weight.mul_(2)
    load_or_convert(model, tmp_path, on_convert=count)
    assert len(conversions) == 3

    # Another OpenVINO version: stale too.
    key = backends.cache_key
    monkeypatch.setattr(
        backends, "cache_key", lambda m, graph="vectors": {**key(m, graph), "openvino": "0.0.0"}
    )
    load_or_convert(model, tmp_path, on_convert=count)
    assert len(conversions) == 4
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 3
    assert first.inputs[0].get_element_type().get_type_name() == "u8"


@needs_openvino
def test_feature_map_graph_takes_any_size_and_matches_torch(tmp_path):
    embedder = create_embedder(
        tiny_spatial_model(), backend="openvino", cache_dir=tmp_path, feature_map=True
    )
    reference = TorchEmbedder(tiny_spatial_model(), precision="fp32")
    rng = np.random.default_rng(0)
    for shape in [(3, 32, 32, 3), (2, 48, 64, 3), (1, 64, 40, 3)]:  # one graph, every size
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        got = embedder.feature_map(pixels)
        assert got.shape == (shape[0], 8, shape[1] // 4, shape[2] // 4)
        np.testing.assert_allclose(
            got.numpy(), reference.feature_map(pixels).numpy(), rtol=1e-4, atol=1e-5
        )
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    graphs = {json.loads((p / "entry.json").read_text())["key"]["graph"] for p in entries}
    assert graphs == {"vectors", "feature_map"}


@needs_openvino
def test_a_graph_that_freezes_its_input_size_is_never_used(tmp_path):
    model = tiny_spatial_model(frozen=True)
    with pytest.raises(ConversionMismatch, match="shape"):
        load_or_convert(model, tmp_path, graph="feature_map")
    # Nothing was cached for it: the next run checks again rather than trusting a bad graph.
    cached = [json.loads((p / "entry.json").read_text()) for p in tmp_path.iterdir()]
    assert all(entry["key"]["graph"] != "feature_map" for entry in cached)

    # Whole images at the fixed input size are right, so only object embeddings fall back.
    assert create_embedder(model, backend="auto", cache_dir=tmp_path).backend == "openvino"
    with pytest.warns(RuntimeWarning, match="OpenVINO could not compile 'tiny-map'.*torch"):
        objects = create_embedder(model, backend="auto", cache_dir=tmp_path, feature_map=True)
    assert objects.backend == "torch"


# --------------------------------------------------------------------------- selection and fallback


def test_backend_and_precision_resolution():
    expected = "openvino" if openvino_available() else "torch"
    assert resolve_backend("auto", "cpu") == expected
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_precision("openvino", "auto") == "fp32"
    assert resolve_precision("openvino", "bf16") == "bf16"
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
        resolve_precision("openvino", "fp16")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("onnx", "cpu")
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_backend("openvino", "cuda")


def test_a_gpu_gets_torch_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backends.default_device("auto") == backends.default_device("torch") == "cuda"
    assert backends.default_device("openvino") == "cpu"
    assert resolve_backend("auto", backends.default_device("auto")) == "torch"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backends.default_device("auto") == "cpu"


def test_without_openvino_auto_is_torch_and_openvino_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    assert not openvino_available()
    assert resolve_backend("auto", "cpu") == "torch"
    assert create_embedder(tiny_model()).backend == "torch"
    with pytest.raises(ImportError, match="pip install openvino"):
        create_embedder(tiny_model(), backend="openvino")


@needs_openvino
def test_a_graph_that_does_not_convert_falls_back_to_torch_with_a_notice(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(backends, "load_or_convert", refuse)
    with pytest.warns(RuntimeWarning, match="OpenVINO could not compile 'tiny'.*torch"):
        embedder = create_embedder(tiny_model(), backend="auto")
    assert embedder.backend == "torch"
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="unsupported"):
        create_embedder(tiny_model(), backend="openvino")  # asked for by name: no fallback


# --------------------------------------------------------------------------- own models (extract)


class _BatchFrozen(nn.Module):
    """Scales by its batch size read as a Python int: a trace freezes it (wrong at other sizes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * int(x.shape[0])


@needs_openvino
@pytest.mark.slow
def test_own_model_on_openvino_matches_torch_fp32_on_real_photos(labelled_photos):
    """The real-weights default network, given to `extract` as a user's module: its output layer
    runs on OpenVINO and agrees with torch fp32 as the embedder must (cosine, 5-NN labels)."""
    from shoal.embedding.extract import extract_embeddings

    files, labels = labelled_photos
    module = create_model("efficientnet_lite0")
    reference = extract_embeddings(module, files, backend="torch", device="cpu")
    used: dict[str, str] = {}
    vectors = extract_embeddings(module, files, backend="openvino", details=used, device="cpu")
    assert used == {"backend": "openvino", "precision": "fp32"}
    similarity = cosine(vectors, reference)
    assert similarity.mean() >= 0.999 and similarity.min() > 0.99, similarity.min()
    ours, theirs = knn_accuracy(vectors, labels), knn_accuracy(reference, labels)
    assert abs(ours - theirs) <= 0.01 and theirs > 0.5, (ours, theirs)


@needs_openvino
def test_own_model_layers_run_on_openvino_or_fall_back_with_a_notice():
    import torchvision

    from shoal.embedding.extract import AUTO_OPENVINO_MIN_IMAGES, extract_embeddings

    photos = [p for p in sorted(SAMPLE.glob("*/*/*"))][:6]
    torch.manual_seed(0)
    segmenter = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None
    ).eval()
    # A segmentation backbone's last stage (a spatial map pooled in torch) and an inner layer.
    for task, layer in [("segmentation", None), ("classification", "backbone.8")]:
        used: dict[str, str] = {}
        got = extract_embeddings(
            segmenter, photos, task=task, layer=layer, backend="openvino", details=used
        )
        expected = extract_embeddings(segmenter, photos, task=task, layer=layer, backend="torch")
        assert used["backend"] == "openvino"
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)

    # "auto" does not convert for a short run: converting costs more than it saves.
    used = {}
    extract_embeddings(segmenter, photos[:2], task="segmentation", details=used)
    assert used["backend"] == "torch" and len(photos) < AUTO_OPENVINO_MIN_IMAGES

    # A graph that differs from torch at another batch size is refused, and torch runs instead.
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3), _BatchFrozen())
    used = {}
    with pytest.warns(
        RuntimeWarning, match=r"OpenVINO cannot run layer '1'.*extracting with torch"
    ):
        vectors = extract_embeddings(
            frozen, photos[:3], layer="1", batch_size=3, backend="openvino", details=used
        )
    assert used["backend"] == "torch"
    with torch.inference_mode():
        inputs = torch.stack([Preprocessing()(Image.open(p).convert("RGB")) for p in photos[:3]])
        np.testing.assert_allclose(vectors, frozen(inputs).numpy(), rtol=1e-5, atol=1e-6)
