"""Own-model extraction: preprocessing, classifier pre-logits, layer names, loading, TorchScript.

Every model has random weights (no download); inputs are real photos from scikit-image.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data
from torch import nn
from torchvision import transforms

from shoal.embedding.extract import (
    LayerNotFoundError,
    ModelLoadError,
    Preprocessing,
    UserModel,
    extract_embeddings,
    list_layers,
    load_user_model,
    resolve_layer,
)
from shoal.embedding.pipeline import EmbeddingCancelled, Progress

SMALL = Preprocessing(size=128)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.chelsea()),
        Image.fromarray(data.coffee()),
    ]


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _batch(images: list[Image.Image], preprocessing: Preprocessing) -> torch.Tensor:
    return torch.stack([preprocessing(image) for image in images])


def _without_last_linear(model: nn.Module) -> nn.Module:
    """A copy whose last nn.Linear is an Identity: its output is the pre-logits (the oracle)."""
    clone = copy.deepcopy(model).eval()
    name = [n for n, m in clone.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    setattr(clone.get_submodule(parent_name) if parent_name else clone, attr, nn.Identity())
    return clone


# --------------------------------------------------------------------------- preprocessing


def test_center_crop_matches_torchvision_transforms(photos: list[Image.Image]) -> None:
    reference = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    for photo in photos:
        expected = reference(photo)
        got = Preprocessing()(photo)
        assert got.shape == (3, 224, 224)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_resize_policies_and_channel_orders(photos: list[Image.Image]) -> None:
    coffee = photos[2]  # 600 x 400, landscape
    for resize in ("center_crop", "stretch", "pad"):
        assert Preprocessing(size=(96, 160), resize=resize)(coffee).shape == (3, 96, 160)
    assert Preprocessing(resize="none")(coffee).shape == (3, 400, 600)

    padded = Preprocessing(size=120, resize="pad")(coffee)  # fits as 120 x 80, centred
    assert torch.all(padded[:, :20] == 0) and torch.all(padded[:, 100:] == 0)
    assert padded[:, 20:100].abs().sum() > 0

    rgb = Preprocessing(size=64, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))(coffee)
    bgr = Preprocessing(size=64, mean=(0.3, 0.2, 0.1), std=(0.6, 0.5, 0.4), channel_order="BGR")(
        coffee
    )
    torch.testing.assert_close(bgr, rgb.flip(0))
    grey = Preprocessing(size=64, mean=(0.5,), std=(0.5,), channel_order="L")(coffee)
    assert grey.shape == (1, 64, 64) and grey.min() >= -1.0 and grey.max() <= 1.0


def test_preprocessing_validates_and_round_trips() -> None:
    with pytest.raises(ValueError, match="3 mean and std"):
        Preprocessing(mean=(0.5,))
    with pytest.raises(ValueError, match="resize must be"):
        Preprocessing(resize="squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        Preprocessing.from_dict({"sise": 10})
    prep = Preprocessing(size=(100, 150), resize="pad", channel_order="BGR")
    assert Preprocessing.from_dict(prep.to_dict()) == prep


# --------------------------------------------------------------------------- classification


def test_resnet50_pre_logits_are_2048d_exact_and_deterministic(
    resnet50: nn.Module, photos: list[Image.Image]
) -> None:
    assert (
        resolve_layer(resnet50, images=photos[:1], preprocessing=SMALL, device="cpu") == "fc:input"
    )
    vectors = extract_embeddings(resnet50, photos, preprocessing=SMALL, device="cpu")
    assert vectors.shape == (3, 2048) and vectors.dtype == np.float32
    with torch.inference_mode():
        expected = _without_last_linear(resnet50)(_batch(photos, SMALL)).numpy()
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)

    again = extract_embeddings(resnet50, photos, preprocessing=SMALL, device="cpu")
    np.testing.assert_array_equal(vectors, again)
    one_by_one = extract_embeddings(
        resnet50, photos, preprocessing=SMALL, batch_size=1, device="cpu"
    )
    np.testing.assert_allclose(one_by_one, vectors, rtol=1e-4, atol=1e-5)
    # The same activations, named as a module output and as an fx node.
    for layer in ("avgpool", "flatten"):
        named = extract_embeddings(resnet50, photos, layer=layer, preprocessing=SMALL, device="cpu")
        np.testing.assert_array_equal(named, vectors)
    assert resnet50.training is False


def test_spatial_and_functional_layers_are_average_pooled(
    resnet18: nn.Module, photos: list[Image.Image]
) -> None:
    with torch.inference_mode():
        x = _batch(photos[:2], SMALL)
        stem = resnet18.maxpool(resnet18.relu(resnet18.bn1(resnet18.conv1(x))))
        layer2 = resnet18.layer2(resnet18.layer1(stem))
    expected = layer2.mean(dim=(2, 3)).numpy()
    for layer in ("layer2", "layer2.1.relu_1"):  # module output; fx node of the block's last ReLU
        vectors = extract_embeddings(
            resnet18, photos[:2], layer=layer, preprocessing=SMALL, device="cpu"
        )
        assert vectors.shape == (2, 128)
        np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("builder", "layer", "dim"),
    [
        pytest.param(
            torchvision.models.densenet121, "classifier:input", 1024, marks=pytest.mark.slow
        ),
        (torchvision.models.efficientnet_b0, "classifier.1:input", 1280),
        (torchvision.models.mobilenet_v3_small, "classifier.3:input", 1024),
        pytest.param(torchvision.models.vgg11, "classifier.6:input", 4096, marks=pytest.mark.slow),
        pytest.param(
            torchvision.models.convnext_tiny, "classifier.2:input", 768, marks=pytest.mark.slow
        ),
        pytest.param(torchvision.models.vit_b_16, "heads.head:input", 768, marks=pytest.mark.slow),
    ],
)
def test_known_classifiers_default_to_their_pre_classifier_input(
    builder, layer: str, dim: int, photos: list[Image.Image]
) -> None:
    torch.manual_seed(0)
    model = builder(weights=None).eval()
    prep = Preprocessing() if builder is torchvision.models.vit_b_16 else Preprocessing(size=128)
    assert resolve_layer(model, preprocessing=prep, device="cpu") == layer
    vectors = extract_embeddings(model, photos[:2], preprocessing=prep, device="cpu")
    with torch.inference_mode():
        expected = _without_last_linear(model)(_batch(photos[:2], prep)).numpy()
    assert vectors.shape == (2, dim)
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)


class _TokenNet(nn.Module):
    """Patches -> tokens with a CLS token in front -> linear head on the CLS token."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, kernel_size=16, stride=16)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = self.mix(torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1))
        return self.head(tokens[:, 0])


def test_token_layers_pool_by_mean_or_cls(photos: list[Image.Image]) -> None:
    torch.manual_seed(0)
    net = _TokenNet().eval()
    prep = Preprocessing(size=64)
    with torch.inference_mode():
        x = _batch(photos, prep)
        tokens = net.mix(
            torch.cat([net.cls.expand(3, -1, -1), net.patch(x).flatten(2).transpose(1, 2)], 1)
        )
    mean = extract_embeddings(net, photos, layer="mix", preprocessing=prep, device="cpu")
    cls = extract_embeddings(
        net, photos, layer="mix", token_pooling="cls", preprocessing=prep, device="cpu"
    )
    np.testing.assert_allclose(mean, tokens.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cls, tokens[:, 0].numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- layer names


def test_wrong_layer_name_lists_valid_names_closest_first(
    resnet18: nn.Module, photos: list[Image.Image]
) -> None:
    with pytest.raises(LayerNotFoundError) as caught:
        extract_embeddings(resnet18, photos[:1], layer="layer5", preprocessing=SMALL, device="cpu")
    message = str(caught.value)
    assert caught.value.closest[:4] == ["layer4", "layer3", "layer2", "layer1"]
    assert "Closest matches: layer4, layer3, layer2, layer1" in message
    assert "Valid layers" in message and "avgpool" in message and "fc" in message
    assert {"layer4", "avgpool", "fc", "layer3.1.conv2", "layer4.1.relu_1"} <= set(
        caught.value.valid
    )

    with pytest.raises(LayerNotFoundError, match="Closest matches: avgpool"):
        resolve_layer(resnet18, layer="avgpol")


def test_list_layers_modules_then_functional_nodes(resnet18: nn.Module) -> None:
    names = list_layers(resnet18)
    modules = [n for n, _ in resnet18.named_modules() if n]
    assert names[: len(modules)] == modules
    assert "flatten" in names and "layer4.1.relu_1" in names and names[-1] == "output"
    assert list_layers(resnet18, include_functional=False) == [*modules, "output"]


# --------------------------------------------------------------------------- user models

FACTORY = """
import torch
import torchvision

PREPROCESSING = {"size": 96, "resize": "stretch", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def build_model():
    torch.manual_seed(SEED)
    return torchvision.models.resnet18(weights=None, num_classes=10)
"""


def _write_factory(folder: Path, *, seed: int, extra: str = "") -> Path:
    path = folder / f"net_{seed}.py"
    path.write_text(textwrap.dedent(FACTORY).replace("SEED", str(seed)) + extra)
    return path


def test_factory_file_with_declared_preprocessing(
    tmp_path: Path, photos: list[Image.Image]
) -> None:
    path = _write_factory(tmp_path, seed=3)
    user = load_user_model(f"{path}:build_model")
    assert isinstance(user, UserModel) and not user.is_torchscript
    assert user.preprocessing == Preprocessing(
        size=96, resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3
    )
    assert user.describe()["size"] == [96, 96] and user.source == f"{path}:build_model"
    vectors = extract_embeddings(user, photos, device="cpu")

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.inference_mode():
        expected = _without_last_linear(reference)(_batch(photos, user.preprocessing)).numpy()
    assert vectors.shape == (3, 512)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    # The factory name defaults to build_model.
    np.testing.assert_array_equal(
        extract_embeddings(load_user_model(str(path)), photos, device="cpu"), vectors
    )


def test_factory_weights_load_safely(tmp_path: Path, photos: list[Image.Image]) -> None:
    trained = load_user_model(str(_write_factory(tmp_path, seed=1)))
    weights = tmp_path / "weights.pth"
    torch.save({"state_dict": trained.module.state_dict()}, weights)
    other_seed = str(_write_factory(tmp_path, seed=2))
    restored = load_user_model(other_seed, weights=weights)
    expected = extract_embeddings(trained, photos[:2], device="cpu")
    np.testing.assert_array_equal(extract_embeddings(restored, photos[:2], device="cpu"), expected)
    assert not np.allclose(
        extract_embeddings(load_user_model(other_seed), photos[:2], device="cpu"), expected
    )

    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": trained.module.state_dict(), "extra": Path("x")}, pickled)
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_user_model(other_seed, weights=pickled)


def test_factory_preprocess_function_is_used(tmp_path: Path, photos: list[Image.Image]) -> None:
    extra = "\n\ndef preprocess(image):\n    return torch.ones(3, 64, 64)\n"
    user = load_user_model(str(_write_factory(tmp_path, seed=0, extra=extra)))
    vectors = extract_embeddings(user, photos, device="cpu")
    assert user.describe()["preprocess"] == "custom"
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_load_errors_are_explained(tmp_path: Path) -> None:
    path = _write_factory(tmp_path, seed=0)
    with pytest.raises(ModelLoadError, match="no callable 'make'.*build_model"):
        load_user_model(f"{path}:make")
    with pytest.raises(ModelLoadError, match="no such model file"):
        load_user_model(str(tmp_path / "missing.py"))
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(nn.Linear(2, 2).state_dict(), checkpoint)
    with pytest.raises(ModelLoadError, match="not a TorchScript archive.*factory"):
        load_user_model(str(checkpoint))


class _EmbeddingNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(
            self.net.avgpool(
                self.net.layer4(
                    self.net.layer3(
                        self.net.layer2(
                            self.net.layer1(
                                self.net.maxpool(self.net.relu(self.net.bn1(self.net.conv1(x))))
                            )
                        )
                    )
                )
            ),
            1,
        )


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_file(tmp_path: Path, photos: list[Image.Image]) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    eager = extract_embeddings(resnet, photos, preprocessing=SMALL, device="cpu")

    trunk = tmp_path / "trunk.pt"  # forward gives (batch, 512, 1, 1): pooled automatically
    torch.jit.save(torch.jit.script(nn.Sequential(*list(resnet.children())[:-1])), trunk)
    user = load_user_model(trunk, preprocessing=SMALL)
    assert user.is_torchscript and resolve_layer(user) == "output"
    np.testing.assert_allclose(
        extract_embeddings(user, photos, device="cpu"), eager, rtol=1e-5, atol=1e-6
    )

    exported = tmp_path / "with_embed.ts"
    torch.jit.save(torch.jit.script(_EmbeddingNet(resnet)), exported)
    user = load_user_model(exported, preprocessing={"size": 128})
    assert resolve_layer(user) == "embed"
    np.testing.assert_allclose(
        extract_embeddings(user, photos, device="cpu"), eager, rtol=1e-5, atol=1e-6
    )
    logits = extract_embeddings(user, photos, layer="output", device="cpu")
    assert logits.shape == (3, 1000)
    with pytest.raises(LayerNotFoundError, match="Closest matches: embed"):
        extract_embeddings(user, photos, layer="embedd", device="cpu")


# --------------------------------------------------------------------------- running


def test_inputs_as_paths_pil_and_arrays_agree(
    tmp_path: Path, resnet18: nn.Module, photos: list[Image.Image]
) -> None:
    paths = []
    for index, photo in enumerate(photos):
        paths.append(tmp_path / f"photo_{index}.png")
        photo.save(paths[-1])
    arrays = [np.asarray(photo) for photo in photos]
    from_pil = extract_embeddings(resnet18, photos, preprocessing=SMALL, device="cpu")
    np.testing.assert_array_equal(
        extract_embeddings(resnet18, paths, preprocessing=SMALL, device="cpu"), from_pil
    )
    np.testing.assert_array_equal(
        extract_embeddings(resnet18, arrays, preprocessing=SMALL, device="cpu"), from_pil
    )


def test_images_of_different_sizes_without_resizing(
    resnet18: nn.Module, photos: list[Image.Image]
) -> None:
    small = [photo.resize((photo.width // 4, photo.height // 4)) for photo in photos]
    unresized = Preprocessing(resize="none")
    vectors = extract_embeddings(resnet18, small, preprocessing=unresized, device="cpu")
    singles = [
        extract_embeddings(resnet18, [p], preprocessing=unresized, device="cpu")[0] for p in small
    ]
    np.testing.assert_array_equal(vectors, np.stack(singles))  # each size runs on its own


def test_progress_reports_and_cancellation(resnet18: nn.Module, photos: list[Image.Image]) -> None:
    seen: list[Progress] = []
    extract_embeddings(
        resnet18, photos, batch_size=2, preprocessing=SMALL, progress=seen.append, device="cpu"
    )
    assert [(p.done, p.total) for p in seen] == [(0, 3), (2, 3), (3, 3)]
    assert seen[-1].eta_seconds == 0.0

    calls = iter([False, True])
    with pytest.raises(EmbeddingCancelled, match="after 2 of 3"):
        extract_embeddings(
            resnet18,
            photos,
            batch_size=2,
            layer="fc:input",
            preprocessing=SMALL,
            should_stop=lambda: next(calls),
            device="cpu",
        )


def test_factory_imports_siblings_and_modules_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tiny_blocks.py").write_text(
        "import torch\n\ndef block():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
        "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
    )
    (tmp_path / "tiny_factory.py").write_text(
        "from tiny_blocks import block\n\ndef make():\n    return block()\n"
    )
    from_file = load_user_model(f"{tmp_path / 'tiny_factory.py'}:make")
    assert isinstance(from_file.module, nn.Sequential)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_name = load_user_model("tiny_factory:make")
    assert isinstance(by_name.module, nn.Sequential) and by_name.source == "tiny_factory:make"


def test_split_factory_keeps_drive_letters() -> None:
    from shoal.embedding.extract.loading import _split_factory

    assert _split_factory("models/net.py:build") == ("models/net.py", "build")
    assert _split_factory("models/net.py") == ("models/net.py", "build_model")
    assert _split_factory("C:\\models\\net.py:build") == ("C:\\models\\net.py", "build")
    assert _split_factory("C:\\models\\net.py") == ("C:\\models\\net.py", "build_model")
    assert _split_factory("package.module:make") == ("package.module", "make")
    with pytest.raises(ModelLoadError, match="not a Python function name"):
        _split_factory("net.py:build-model")
