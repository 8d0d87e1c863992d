"""The model registry: ``@register_model`` builders, ``create_model`` and ``list_models``.

Models belong to a task. Image classifiers (``task="classification"``, the default) have the
builder signature
``builder(*, in_channels: int, num_classes: int, input_size: tuple[int, int], **kwargs)``
and return a module with the shared interface of :class:`Classifier`: ``features(x)``,
``head(f)`` and ``reset_head(num_classes)``, so freezing, Grad-CAM and feature caching work
the same for every model. Regression models (``task="regression"``, e.g. ``fit_mlp``) map
``(N, in_features)`` floats to ``(N, out_features)``; their builders take keyword options
only, all with registered defaults.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepstart.errors import DeepstartError


class ModelError(DeepstartError, ValueError):
    """An unknown model name or arguments a model cannot take."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model before building it.

    Attributes:
        name: registry name, e.g. ``"mnist_cnn"``.
        builder: the function that builds it.
        description: one line for ``deepstart models``.
        family: module family ("basic", "cnn", ...).
        input_size: the ``(H, W)`` it was designed for (it accepts others).
        in_channels: the channel count it was designed for.
        num_classes: the class count it was designed for.
        head: attribute name of the head module (what ``reset_head`` replaces).
        defaults: keyword arguments the builder uses unless told otherwise.
        task: "classification" (images -> logits, the :class:`Classifier` interface) or
            "regression" (floats -> floats); the image fields above only apply to the first.
        training: :class:`~deepstart.config.TrainConfig` fields this model trains with when
            no recipe sets them (``deepstart train --model NAME``): what made it reach its
            measured accuracy (docs/benchmarks.md, "The models' own training settings").
    """

    name: str
    builder: Callable[..., nn.Module]
    description: str = ""
    family: str = ""
    input_size: tuple[int, int] = (28, 28)
    in_channels: int = 1
    num_classes: int = 10
    head: str = "classifier"
    defaults: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"
    training: dict[str, Any] = field(default_factory=dict)


TASKS = ("classification", "regression")
_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None,
    *,
    description: str = "",
    input_size: tuple[int, int] = (28, 28),
    in_channels: int = 1,
    num_classes: int = 10,
    head: str = "classifier",
    task: str = "classification",
    training: dict[str, Any] | None = None,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name`` (default: the function's name).

    ``task`` is "classification" (an image model with the :class:`Classifier` interface) or
    "regression" (floats to floats; every builder argument needs a default in ``defaults``).
    ``training`` holds the TrainConfig fields the model trains with by default (see
    :func:`training_defaults`); they are checked here, so a typo fails at import.

    Example:
        >>> @register_model(description="one linear layer")
        ... def logreg(*, in_channels, num_classes, input_size): ...
    """

    if task not in TASKS:
        raise ModelError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    training = dict(training or {})

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ModelError(f"model {key!r} is registered twice")
        if training:
            from deepstart.config import TrainConfig

            try:  # an unknown field or a bad value fails at registration, not in a user's run
                TrainConfig(**training)
            except (TypeError, ValueError) as e:
                raise ModelError(f"model {key!r}: bad training settings: {e}") from None
        family = fn.__module__.rsplit(".", 1)[-1]
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[key] = ModelInfo(
            key, fn, doc, family, input_size, in_channels, num_classes, head, dict(defaults),
            task=task, training=training,
        )  # fmt: skip
        return fn

    return decorate


def _ensure_loaded() -> None:
    # The families register themselves on import; importing them here (not at package import)
    # keeps `import deepstart` light.
    from deepstart.models import basic, cnn, efficientnet, fast, regression, resnet, spec  # noqa: F401


def list_models(task: str | None = "classification") -> list[ModelInfo]:
    """The registered models of ``task``, sorted by name.

    The default lists the image classifiers, the models everything image-shaped (training,
    interpretation, Grad-CAM, the contract tests) works with; ``task="regression"`` lists the
    function fitters and ``task=None`` every model.

    Example:
        >>> [m.name for m in list_models("regression")]
        ['fit_mlp']
    """
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY) if task is None or _REGISTRY[k].task == task]


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; a ModelError lists the known names if it is unknown.

    A layer spec (``"conv32-pool-flat-dense128"``) gives the ``spec`` model's entry with the
    spec as its default option.
    """
    _ensure_loaded()
    name, kwargs = resolve_spec(name, {})
    try:
        info = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelError(
            f"unknown model {name!r}; known models: {known}; or a layer spec such as "
            f"conv32-pool-flat-dense128 (docs/experiment.md)"
        ) from None
    if kwargs:
        info = dataclasses.replace(info, defaults={**info.defaults, **kwargs})
    return info


def training_defaults(name: str) -> dict[str, Any]:
    """The TrainConfig fields model ``name`` trains with unless told otherwise (empty when it
    has none): ``TrainConfig(**{**training_defaults("mnist_cnn"), "epochs": 3})``.

    ``deepstart train --model NAME`` starts from them when no recipe is chosen; a recipe's
    own settings replace them, and typed flags win over both.

    Example:
        >>> training_defaults("mnist_cnn")["epochs"]
        12
    """
    return dict(get_model_info(name).training)


def resolve_spec(name: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A layer spec used as a model name is the registry model ``spec`` with ``spec=name``;
    registry names win, and any other name is returned as it is."""
    _ensure_loaded()
    if name in _REGISTRY:
        return name, kwargs
    from deepstart.models.spec import is_spec

    return ("spec", {"spec": name, **kwargs}) if is_spec(name) else (name, kwargs)


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    """``32`` -> ``(32, 32)``; ``(28, 32)`` as it is."""
    if isinstance(size, int):
        return (size, size)
    return tuple(int(s) for s in size)


def create_model(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    pretrained: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model for the given input and class count.

    The arguments are recorded on the model as ``model.arch`` (a JSON-able dict), which is
    what the run directory and bundle store to rebuild it. ``pretrained`` loads weights into
    it: a weights name of the model (``"imagenet"``, see ``deepstart weights``), a file or a
    URL; a head for other classes than the weights' stays new. The weights' input scaling is
    then ``model.pretrained_report.mean``/``.std`` (put it in the data's ``Preprocess``).

    Example:
        >>> model = create_model("mnist_cnn", in_channels=1, num_classes=10, input_size=(28, 28))
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net = create_model("efficientnet_lite0", pretrained="imagenet")  # 1000 classes
    """
    name, kwargs = resolve_spec(name, kwargs)
    info = get_model_info(name)
    if info.task != "classification":
        given = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size}
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise ModelError(
                f"{name} is a {info.task} model: it has no {', '.join(named)}; "
                f"its options: {', '.join(sorted(info.defaults)) or 'none'}"
            )
        return _create_plain(info, kwargs)
    args = {
        "in_channels": int(in_channels if in_channels is not None else info.in_channels),
        "num_classes": int(num_classes if num_classes is not None else info.num_classes),
        # a square side alone (``input_size=32``) is what most people type
        "input_size": _size(input_size or info.input_size),
    }
    if args["in_channels"] < 1 or args["num_classes"] < 1 or min(args["input_size"]) < 1:
        h, w = args["input_size"]
        raise ModelError(
            f"{name} needs a positive input size, channel and class count; got {h}x{w} input, "
            f"{args['in_channels']} channels, {args['num_classes']} classes"
        )
    extra = {**info.defaults, **kwargs}
    _check_options(info, extra, reserved=args)
    model = info.builder(**args, **extra)
    model.arch = {
        "name": name,
        "in_channels": args["in_channels"],
        "num_classes": args["num_classes"],
        "input_size": list(args["input_size"]),
        "kwargs": {k: _jsonable(v) for k, v in extra.items()},
    }
    if pretrained is not None:
        from deepstart.models.weights import load_source

        model.pretrained_report = load_source(model, pretrained)
    return model


def _check_options(info: ModelInfo, extra: dict[str, Any], reserved: dict[str, Any]) -> None:
    """Check option names against the builder's signature rather than catching TypeError,
    which would also hide a genuine bug inside the builder."""
    params = inspect.signature(info.builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in extra if k not in params]
    if unknown and not takes_any:
        options = sorted(k for k in params if k not in reserved)
        raise ModelError(
            f"model {info.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(options) or 'none'}"
        )


def _create_plain(info: ModelInfo, kwargs: dict[str, Any]) -> nn.Module:
    """A model whose builder takes options only (regression); arch records them all."""
    extra = {**info.defaults, **kwargs}
    _check_options(info, extra, reserved={})
    model = info.builder(**extra)
    model.arch = {
        "name": info.name,
        "task": info.task,
        "kwargs": {k: _jsonable(v) for k, v in extra.items()},
    }
    return model


def create_model_from_arch(arch: dict) -> nn.Module:
    """Rebuild a model from the ``model.arch`` dict that ``create_model`` recorded."""
    if arch.get("task", "classification") != "classification":
        return create_model(arch["name"], **arch.get("kwargs", {}))
    return create_model(
        arch["name"],
        in_channels=arch["in_channels"],
        num_classes=arch["num_classes"],
        input_size=tuple(arch["input_size"]),
        **arch.get("kwargs", {}),
    )


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Classifier(nn.Module):
    """The shared interface: ``forward(x) == head(features(x))``.

    ``features`` returns the body's output: the last feature map ``(N, C, h, w)`` for conv nets
    (what Grad-CAM looks at), ``(N, D)`` for dense nets. ``head`` maps it to logits
    ``(N, num_classes)``; ``self.classifier`` is the head module, whose last ``nn.Linear``
    ``reset_head`` replaces.
    """

    body: nn.Module
    classifier: nn.Module
    # Where the weights came from (``load_pretrained`` sets it: a weights name, URL or file);
    # None for a freshly initialised model. The divergence guard fine-tunes with it.
    pretrained_from: str | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reset_head(self, num_classes: int) -> None:
        """Replace the last linear layer with a fresh one for ``num_classes`` outputs."""
        replace_last_linear(self.classifier, num_classes)
        if hasattr(self, "arch"):
            self.arch = {**self.arch, "num_classes": int(num_classes)}

    def stem_layers(self) -> nn.Module | None:
        """The layers before the first block, which work at the input's full size; None when
        the model has no such part. The ``stem_epochs`` option stops training them part way
        (:class:`deepstart.train.finetune.StemFreeze`)."""
        return None

    def layer_groups(self) -> list[list[nn.Module]]:
        """The model's modules in groups from input to head, for discriminative learning rates
        and gradual unfreezing (fastai's layer groups); every parameter is in exactly one group.

        This default is ``[[body], [classifier]]``; families with more depth split finer.

        Example:
            >>> groups = create_model("mnist_cnn").layer_groups()
            >>> params = [[p for m in g for p in m.parameters()] for g in groups]
            >>> [len(p) for p in params]
            [4, 4]
        """
        return [[self.body], [self.classifier]]


def replace_last_linear(module: nn.Module, num_classes: int) -> None:
    """Swap the last ``nn.Linear`` inside ``module`` for a new one with ``num_classes`` outputs."""
    parent, key, last = None, None, None
    for mod_name, mod in module.named_modules():
        if isinstance(mod, nn.Linear):
            key, last = mod_name, mod
    if last is None or key is None:
        raise ModelError("head has no nn.Linear to replace")
    if key == "":
        raise ModelError("head is itself a Linear; wrap it in a module to reset it")
    path = key.split(".")
    parent = module
    for p in path[:-1]:
        parent = getattr(parent, p)
    new = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    new = new.to(device=last.weight.device, dtype=last.weight.dtype)
    setattr(parent, path[-1], new)
