"""Models used by the presets and for a user's own data, built by name with :func:`build_model`.

Notation: ``K`` classes, ``C`` input channels, ``S`` image side, ``D`` input features.

Besides the presets' networks, :func:`build_model` builds an :class:`MLP` for feature vectors
and any torchvision classification architecture by name, always randomly initialised: weights
come only from a local file, through :func:`load_local_weights`. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from dataparams.config import ConfigError
from dataparams.models.mlp import MLP
from dataparams.models.small_cnn import SmallCNN
from dataparams.models.vgg import VGG16
from dataparams.models.wide_resnet import WideResNet, wrn28_10

__all__ = [
    "ARCHITECTURES",
    "FEATURE_ARCHITECTURES",
    "IMAGE_ARCHITECTURES",
    "MLP",
    "VGG16",
    "LoadReport",
    "SmallCNN",
    "WideResNet",
    "build_model",
    "default_arch",
    "is_known_arch",
    "load_local_weights",
    "torchvision_architectures",
    "wrn28_10",
]

# Built here; any torchvision classification model is also accepted by name (a name that is also
# one of these, vgg16 and resnet18, means the one here; "torchvision.vgg16" means torchvision's).
ARCHITECTURES = ("small_cnn", "wrn28_10", "resnet18", "vgg16", "mlp")
# Which of them take (B, D) feature rows; every other name (torchvision's included) takes images.
FEATURE_ARCHITECTURES = ("mlp",)
IMAGE_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a not in FEATURE_ARCHITECTURES)
TORCHVISION_PREFIX = "torchvision."
# The small CNN pools twice and the CPU presets train it in seconds an epoch at 28-32 px; above
# 64 px its 128-unit layer would see (S/4)^2 * 64 inputs and a ResNet is the better fit.
SMALL_IMAGE_MAX = 64


def torchvision_architectures() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    from torchvision import models  # deferred: importing torchvision is slow

    return list(models.list_models(module=models))


def is_known_arch(arch: str) -> bool:
    """Whether :func:`build_model` knows ``arch`` (without building it)."""
    if arch in ARCHITECTURES:
        return True
    name = arch[len(TORCHVISION_PREFIX) :] if arch.startswith(TORCHVISION_PREFIX) else arch
    return name in torchvision_architectures()


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    # Registration order is forward order for torchvision's classifiers: the first Conv2d is the
    # stem that sees the image.
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def _adapt_first_conv(model: nn.Module, in_channels: int, arch: str) -> None:
    """Replace the stem convolution by one taking ``in_channels``, same geometry otherwise."""
    found = _first_conv(model)
    if found is None:
        raise ConfigError(f"{arch}: no convolution found to adapt to {in_channels} input channels")
    name, conv = found
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ConfigError(f"{arch}: the first convolution is grouped; cannot adapt it to {in_channels} channels")
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _build_torchvision(name: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    from torchvision import models

    available = torchvision_architectures()
    if name not in available:
        raise ConfigError(
            f"unknown model.arch {name!r}; choose one of {', '.join(ARCHITECTURES)} or a torchvision "
            f"classification model ({', '.join(available[:6])}, ...)"
        )
    kwargs: dict[str, object] = {}
    if name in ("googlenet", "inception_v3"):
        # Their auxiliary heads make training-mode outputs tuples, which no loss here accepts.
        kwargs.update(aux_logits=False, init_weights=True)
    if name.startswith("vit_"):
        # ViT's position embeddings and MaxViT's attention grids are sized for one input side at
        # construction; build them for ours.
        kwargs["image_size"] = image_size
    elif name.startswith("maxvit"):
        kwargs["input_size"] = (image_size, image_size)
    # weights=None always: a randomly initialised network; local weights via load_local_weights.
    try:
        model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"{name} cannot be built for {image_size} x {image_size} inputs ({e})") from None
    if in_channels != 3:
        _adapt_first_conv(model, in_channels, name)
    # One forward pass of a single image now turns "input too small" (e.g. inception_v3 below
    # 75 px) into a clear error here instead of a shape error in the first training step.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"{name} does not accept {in_channels} x {image_size} x {image_size} inputs ({e}); "
            "choose another model.arch or image size"
        ) from None
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, num_classes):
        raise ConfigError(f"{name} returns {tuple(out.shape)} for one image, expected (1, {num_classes})")
    return model


def build_model(
    arch: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    dropout: float = 0.0,
    in_features: int | None = None,
) -> nn.Module:
    """Build ``arch`` for inputs of ``in_channels`` x ``image_size`` x ``image_size``.

    Parameters
    ----------
    arch : str
        ``small_cnn``, ``wrn28_10``, ``vgg16`` (the CIFAR VGG16-BN), ``resnet18`` (torchvision's,
        the paper's ImageNet / WebVision network), ``mlp`` (needs ``in_features``), or any
        torchvision classification model by name (``resnet50``, ``efficientnet_b0``,
        ``torchvision.vgg16`` for torchvision's ImageNet VGG16, ...). Torchvision models get
        their first convolution rebuilt for ``in_channels`` and are checked with one forward pass.
    num_classes : int
        ``K``.
    in_channels, image_size : int
        ``C`` and ``S`` of the images (ignored by ``mlp``).
    dropout : float
        For ``wrn28_10``, ``vgg16`` and ``mlp``.
    in_features : int, optional
        ``D``, for ``mlp``.

    Returns
    -------
    nn.Module
        Randomly initialised (no weights are downloaded); maps (B, C, S, S) or, for ``mlp``,
        (B, D) to (B, K) logits.
    """
    # A feature row is no image: refused here rather than as a shape error in the first step.
    if in_features is not None and arch not in FEATURE_ARCHITECTURES:
        raise ConfigError(f"model.arch {arch!r} takes images, not feature vectors; use "
                          f"{' or '.join(FEATURE_ARCHITECTURES)}")
    if arch == "small_cnn":
        return SmallCNN(num_classes, in_channels=in_channels, image_size=image_size)
    if arch == "wrn28_10":
        return wrn28_10(num_classes, dropout=dropout, in_channels=in_channels)
    if arch == "vgg16":
        return VGG16(num_classes, in_channels=in_channels, dropout=dropout)
    if arch == "resnet18":
        from torchvision.models import resnet18

        model = resnet18(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return model
    if arch == "mlp":
        if in_features is None:
            raise ConfigError(f"model.arch 'mlp' takes feature vectors (it needs in_features, their length D), not "
                              f"images; use {', '.join(IMAGE_ARCHITECTURES)} or a torchvision classification model")
        return MLP(in_features, num_classes, dropout=dropout)
    name = arch[len(TORCHVISION_PREFIX) :] if arch.startswith(TORCHVISION_PREFIX) else arch
    return _build_torchvision(name, num_classes, in_channels, image_size)


def default_arch(kind: str, image_size: int | None, num_samples: int) -> tuple[str, str]:
    """The architecture to use when the user names none, and why.

    Parameters
    ----------
    kind : {"images", "features"}
    image_size : int or None
        ``S`` (ignored for features).
    num_samples : int
        ``N``, quoted in the reason.

    Returns
    -------
    arch : str
        ``mlp`` for features; ``small_cnn`` for images of side at most 64 (and a multiple of 4,
        which its two poolings need); ``resnet18`` otherwise.
    why : str
        One line for the run's printed and stored choices.
    """
    if kind == "features":
        return "mlp", (
            f"feature vectors ({num_samples:,} rows): an MLP with two hidden layers of 256, enough to "
            "memorise noisy labels, milliseconds an epoch"
        )
    if kind != "images":
        raise ValueError(f"kind must be 'images' or 'features', got {kind!r}")
    if image_size is None or image_size < 1:
        raise ValueError(f"images need a positive image_size, got {image_size}")
    if image_size <= SMALL_IMAGE_MAX and image_size % 4 == 0:
        return "small_cnn", (
            f"{image_size} px images (<= {SMALL_IMAGE_MAX}): the small CNN (2 convolutions, 1 hidden layer) "
            f"trains {num_samples:,} images in seconds an epoch on a CPU"
        )
    if image_size <= SMALL_IMAGE_MAX:
        reason = "not a multiple of 4, which the small CNN needs"
    else:
        reason = f"> {SMALL_IMAGE_MAX}"
    few = (
        f"; from scratch on only {num_samples:,} images it may overfit: local pretrained weights help"
        if num_samples < 10_000
        else ""
    )
    return "resnet18", f"{image_size} px images ({reason}): torchvision's ResNet-18{few}"


@dataclass
class LoadReport:
    """What :func:`load_local_weights` did with each tensor of the checkpoint.

    Attributes
    ----------
    loaded : list of str
        Names copied as they are.
    adapted : list of str
        Names whose RGB input filters were summed to the model's one input channel.
    skipped : list of (str, tuple, tuple)
        ``(name, checkpoint shape, model shape)`` for tensors whose shapes differ, e.g. the
        classifier head of a 1000-class checkpoint; the model keeps its own initialisation.
    missing : list of str
        Model tensors the checkpoint does not have.
    unexpected : list of str
        Checkpoint tensors the model does not have.
    """

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the run log."""
        parts = [f"loaded {len(self.loaded)} tensors"]
        if self.adapted:
            parts.append(f"adapted {', '.join(self.adapted)} from RGB to one channel")
        if self.skipped:
            shown = ", ".join(f"{n} {list(a)} vs {list(b)}" for n, a, b in self.skipped[:3])
            parts.append(f"skipped {len(self.skipped)} of another shape ({shown})")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the checkpoint ({', '.join(self.missing[:3])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} not in the model ({', '.join(self.unexpected[:3])})")
        return "; ".join(parts)


def _state_dict_of(obj: object, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"{path}: expected a state_dict (names -> tensors), or a dict holding one under "
            "'state_dict' or 'model'"
        )
    state = {str(k): v for k, v in obj.items()}
    # Saved from nn.DataParallel / DistributedDataParallel: every name starts with "module.".
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_local_weights(model: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Copy the tensors of a local checkpoint file into ``model`` where names and shapes match.

    Parameters
    ----------
    model : nn.Module
    path : path-like
        A ``torch.save``d state_dict, or a dict holding one under ``state_dict`` or ``model``
        (as training scripts and this package's run checkpoints save them). Read with
        ``weights_only=True``: tensors only, no code is unpickled.

    Returns
    -------
    LoadReport
        Tensors of another shape are skipped and reported (the model keeps its initialisation
        there), e.g. the 1000-way classifier of an ImageNet checkpoint. One exception: a
        3-channel first convolution loaded into a 1-channel model is summed over its input
        channels, which gives a grey image exactly the response the RGB filters give to that
        image repeated in three channels.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a state_dict, or no tensor matches the model by name and shape (most
        likely a checkpoint of another architecture).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means "not a plain tensor checkpoint"
        raise ConfigError(f"{path}: cannot read it as a tensor checkpoint ({type(e).__name__}: {e})") from None
    state = _state_dict_of(obj, path)
    own = model.state_dict()
    first = _first_conv(model)
    first_weight = f"{first[0]}.weight" if first is not None else None

    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in own:
            report.unexpected.append(name)
            continue
        want = own[name]
        if tensor.shape == want.shape:
            to_load[name] = tensor
            report.loaded.append(name)
        elif (
            name == first_weight
            and tensor.dim() == 4
            and tensor.shape[1] == 3
            and want.shape[1] == 1
            and tensor.shape[0] == want.shape[0]
            and tensor.shape[2:] == want.shape[2:]
        ):
            to_load[name] = tensor.sum(1, keepdim=True)
            report.adapted.append(name)
        else:
            report.skipped.append((name, tuple(tensor.shape), tuple(want.shape)))
    report.missing = [name for name in own if name not in state]
    if not to_load:
        raise ConfigError(
            f"{path}: none of its {len(state)} tensors matches the model by name and shape "
            f"(e.g. {next(iter(state))}); is it a checkpoint of another architecture?"
        )
    # Everything in to_load matches by name and shape, so strict=False only spares the rest.
    model.load_state_dict(to_load, strict=False)
    return report
