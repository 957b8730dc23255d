"""Load a user's own model: a Python factory (``module.py:build_model``) or a TorchScript file.

>>> user = load_user_model("my_models/net.py:build_model")          # doctest: +SKIP
>>> user.preprocessing.size
(224, 224)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from shoal.embedding.extract.preprocessing import Preprocess, Preprocessing

DEFAULT_FACTORY = "build_model"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".zip")


class ModelLoadError(RuntimeError):
    """The model spec could not be turned into a module (bad path, factory, file or weights)."""


@dataclass(frozen=True)
class UserModel:
    """A user's network with the preprocessing it expects.

    module: the network (an ``nn.Module`` or a TorchScript ``ScriptModule``).
    preprocessing: declared input size, resize policy, mean, std, channel order.
    preprocess: the factory module's own ``preprocess(image) -> tensor``, used instead of
        ``preprocessing`` when given.
    source: the spec it was loaded from, for the embedding set's metadata.
    """

    module: nn.Module
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    preprocess: Preprocess | None = None
    source: str = ""

    @property
    def is_torchscript(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)

    def transform(self) -> Preprocess:
        """The image -> tensor function to use: ``preprocess`` if the module defined one."""
        return self.preprocess if self.preprocess is not None else self.preprocessing

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (source, preprocessing) for the embedding set's metadata."""
        description: dict[str, Any] = {"source": self.source, **self.preprocessing.to_dict()}
        if self.preprocess is not None:
            description["preprocess"] = "custom"
        return description


def load_user_model(
    spec: str | Path,
    *,
    weights: str | Path | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
) -> UserModel:
    """Load a model from ``spec`` and put it in eval mode on the CPU.

    spec: ``path/to/module.py:build_model`` (a file; the factory name defaults to ``build_model``),
        ``package.module:build_model`` (importable module), or a TorchScript file (``.pt``,
        ``.ts``, ...; loaded with ``torch.jit.load``, which never unpickles Python objects).
        The factory is called without arguments and returns an ``nn.Module``. Its module may
        define ``PREPROCESSING`` (a :class:`Preprocessing` or a dict of its fields) and/or
        ``preprocess(image: PIL.Image) -> (C, H, W) tensor``.
    weights: optional state-dict file loaded with ``torch.load(weights_only=True)`` (a bare
        state dict, or one under a ``"state_dict"`` / ``"model"`` key) into the built model.
    preprocessing: overrides what the module declares; default ImageNet mean/std at 224 px.

    >>> load_user_model("net.py:build_model", weights="net.pth").source     # doctest: +SKIP
    'net.py:build_model'
    """
    spec_text = str(spec)
    module_preprocessing: Preprocessing | None = None
    preprocess: Preprocess | None = None
    path = Path(spec_text)
    if _is_torchscript_spec(spec_text):
        model = _load_torchscript(path)
    else:
        target, factory_name = _split_factory(spec_text)
        with _importable_from(target):
            python_module = _import_target(target)
            factory = getattr(python_module, factory_name, None)
            if not callable(factory):
                names = sorted(
                    n
                    for n, v in vars(python_module).items()
                    if callable(v) and not n.startswith("_")
                )
                raise ModelLoadError(
                    f"{target} has no callable {factory_name!r}; callables defined there: "
                    f"{', '.join(names) or 'none'}"
                )
            model = factory()
        if not isinstance(model, nn.Module):
            raise ModelLoadError(
                f"{spec_text}: the factory returned {type(model).__name__}, not a torch.nn.Module"
            )
        module_preprocessing = _module_preprocessing(python_module, spec_text)
        preprocess = getattr(python_module, "preprocess", None)
        if preprocess is not None and not callable(preprocess):
            raise ModelLoadError(f"{spec_text}: 'preprocess' must be callable")
    if weights is not None:
        _load_weights(model, Path(weights))
    if preprocessing is None:
        resolved = module_preprocessing or Preprocessing()
    elif isinstance(preprocessing, Preprocessing):
        resolved = preprocessing
    else:
        resolved = Preprocessing.from_dict(preprocessing)
    return UserModel(
        module=model.eval(), preprocessing=resolved, preprocess=preprocess, source=spec_text
    )


def _is_torchscript_spec(spec: str) -> bool:
    path = Path(spec)
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES and ":" not in path.name:
        return True
    # A spec without a factory part that names an existing non-Python file.
    return path.is_file() and path.suffix != ".py"


def _split_factory(spec: str) -> tuple[str, str]:
    # rpartition keeps Windows drive letters ("C:\\models\\net.py:build") in the target.
    target, sep, factory = spec.rpartition(":")
    if not sep or "/" in factory or "\\" in factory or factory.endswith(".py"):
        return spec, DEFAULT_FACTORY
    if not factory.isidentifier():
        raise ModelLoadError(f"{spec!r}: {factory!r} is not a Python function name")
    return target, factory


def _import_target(target: str) -> ModuleType:
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ModelLoadError(f"no such model file: {target}")
        resolved = path.resolve()
        # A stable, unique name: re-loading the same file gives a fresh module object each time.
        name = "shoal_user_model_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {target}")
        module = importlib.util.module_from_spec(spec)
        # Registered before running, so dataclasses and pickling inside the module work.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    try:
        return importlib.import_module(target)
    except ImportError as error:
        raise ModelLoadError(
            f"cannot import {target!r} ({error}); give a path to a .py file or an importable module"
        ) from error


@contextmanager
def _importable_from(target: str) -> Iterator[None]:
    """Let a factory file import its sibling files while it loads and builds the model."""
    if not target.endswith(".py"):
        yield
        return
    folder = str(Path(target).resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _module_preprocessing(module: ModuleType, spec: str) -> Preprocessing | None:
    declared = getattr(module, "PREPROCESSING", None)
    if declared is None or isinstance(declared, Preprocessing):
        return declared
    if isinstance(declared, Mapping):
        try:
            return Preprocessing.from_dict(declared)
        except (TypeError, ValueError) as error:
            raise ModelLoadError(f"{spec}: invalid PREPROCESSING: {error}") from error
    raise ModelLoadError(
        f"{spec}: PREPROCESSING must be a Preprocessing or a dict, got {type(declared).__name__}"
    )


def _load_torchscript(path: Path) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"no such TorchScript file: {path}")
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 flags TorchScript as deprecated; loading it still works.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise ModelLoadError(
            f"{path} is not a TorchScript archive ({str(error).splitlines()[0]}). A checkpoint of "
            "weights needs the architecture: write a factory module.py:build_model and pass the "
            "file as weights"
        ) from error


def _load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"no such weights file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the safe unpickler raises several types on foreign objects
        raise ModelLoadError(
            f"cannot load {path} as plain tensors (torch.load weights_only=True): {error}"
        ) from error
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            nested = state.get(key)
            if isinstance(nested, Mapping):
                state = nested
                break
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} holds {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"{path} does not fit the model: {error}") from error
