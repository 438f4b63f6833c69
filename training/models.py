"""Video backbones and the embedding head: one registry, one way to build anything (``build_model``).

Every model maps a clip batch (B, C, T, H, W) to ``(embedding, logits)``: the embedding is L2-normalised
(Linear + BatchNorm, then normalised: what retrieval ranks by cosine), the logits come from a cosine classifier
over the training identities with a fixed scale ``s`` (bounded logits in [-s, s]: IMAE's gradient does not vanish
as p_y -> 1, so an unbounded linear classifier lets the logits grow without limit; docs/losses.md).

Backbones start from random initialisation; ``weights`` loads a local state-dict file or the backbone of a vidret
checkpoint (pretraining, then fine-tuning). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from indexing.errors import UserError
from training.checkpoint import checked_checkpoint, is_vidret_checkpoint, load_torch_file

_REGISTRY: dict[str, Callable[[], tuple[nn.Module, int]]] = {}


def register_model(name: str) -> Callable[[Callable[[], tuple[nn.Module, int]]], Callable[[], tuple[nn.Module, int]]]:
    """Decorator: a function returning ``(backbone, feature_dim)``; the backbone maps (B,C,T,H,W) -> (B, F)."""

    def deco(fn: Callable[[], tuple[nn.Module, int]]) -> Callable[[], tuple[nn.Module, int]]:
        if name in _REGISTRY:
            raise KeyError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_frame_model(name: str) -> bool:
    """A 2D frame backbone with temporal average pooling (``-tap``): the frame-level loss applies to it."""
    return name.endswith("-tap")


def _tv_video(builder: str, head_attr: str) -> tuple[nn.Module, int]:
    import torchvision.models.video as tvv

    model = getattr(tvv, builder)(weights=None)
    head = getattr(model, head_attr)
    if isinstance(head, nn.Linear):
        dim = head.in_features
    elif isinstance(head, nn.Sequential):  # s3d: Dropout + Conv3d(1024, classes); mvit: Dropout + Linear
        last = head[-1]
        dim = last.in_channels if isinstance(last, nn.Conv3d) else last.in_features
    else:
        raise TypeError(f"unexpected head {type(head).__name__} in {builder}")
    setattr(model, head_attr, nn.Identity())
    if builder == "s3d":  # its fixed (2, 7, 7) pooling only fits 16 x 224 x 224 clips
        model.avgpool = nn.AdaptiveAvgPool3d(1)
    return model, dim


for _name, _attr in [
    ("r3d_18", "fc"),
    ("mc3_18", "fc"),
    ("r2plus1d_18", "fc"),
    ("s3d", "classifier"),
    ("mvit_v2_s", "head"),
    ("swin3d_t", "head"),
]:
    register_model(_name)(lambda _n=_name, _a=_attr: _tv_video(_n, _a))


class TemporalAveragePooling(nn.Module):
    """A 2D frame backbone applied to every frame, features averaged over time (the MARS set-up)."""

    def __init__(self, frame_model: nn.Module) -> None:
        super().__init__()
        self.frame_model = frame_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        return self.frame_model(frames).view(b, t, -1).mean(dim=1)


def _tap(builder: str) -> tuple[nn.Module, int]:
    import torchvision.models as tvm

    model = getattr(tvm, builder)(weights=None)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return TemporalAveragePooling(model), dim


register_model("resnet18-tap")(lambda: _tap("resnet18"))
register_model("resnet50-tap")(lambda: _tap("resnet50"))


class Tiny2D(nn.Module):
    """A small 2D CNN (about 0.1 M parameters) for one frame: with temporal average pooling (``tiny2d-tap``) the
    frame-level model that trains in seconds on a CPU (the noise benchmark, tests)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in widths:
            layers += [
                nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


register_model("tiny2d-tap")(lambda: (lambda m: (TemporalAveragePooling(m), m.out_dim))(Tiny2D()))


class Tiny3D(nn.Module):
    """A small 3D CNN (about 0.4 M parameters) that trains in seconds on a CPU: tests and CPU benchmarks."""

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 160)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            stride = (1, 2, 2) if i == 0 else (2 if i >= 2 else 1, 2, 2)
            layers += [
                nn.Conv3d(c_in, c, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(c),
                nn.ReLU(inplace=True),
                nn.Conv3d(c, c, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm3d(c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3, 4))


register_model("tiny3d")(lambda: (lambda m: (m, m.out_dim))(Tiny3D()))


class CosineClassifier(nn.Module):
    """logits = s * cos(embedding, class weight): bounded in [-s, s]."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.scale = float(scale)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(emb, F.normalize(self.weight, dim=1))


class VideoEmbedder(nn.Module):
    def __init__(
        self, backbone: nn.Module, feature_dim: int, num_classes: int, embedding_dim: int, scale: float
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Sequential(nn.Linear(feature_dim, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        self.classifier = CosineClassifier(embedding_dim, num_classes, scale)
        self.weights_loaded: str | None = None  # what --weights loaded, in words (build_model)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.neck(self.backbone(x)).float(), dim=1)

    def forward(self, x: torch.Tensor, per_frame: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, logits)`` of each clip; ``per_frame`` (frame backbones only): of each frame, (B * T, ...)
        in clip-major order, for the frame-level loss (training/frame_level.py)."""
        if per_frame:
            if not isinstance(self.backbone, TemporalAveragePooling):
                raise UserError("per-frame outputs need a frame backbone (a -tap model)")
            b, c, t, h, w = x.shape
            feats = self.backbone.frame_model(x.transpose(1, 2).reshape(b * t, c, h, w))
            emb = F.normalize(self.neck(feats).float(), dim=1)
        else:
            emb = self.embed(x)
        return emb, self.classifier(emb)


def build_model(
    name: str, num_classes: int, embedding_dim: int = 256, scale: float = 16.0, weights: str | Path | None = None
) -> VideoEmbedder:
    """Build a registered backbone with the embedding head; ``weights``: a local backbone state-dict file."""
    if name not in _REGISTRY:
        raise UserError(f"--model: unknown model {name!r}; choose one of: {', '.join(list_models())}")
    if num_classes < 2:
        raise UserError(f"training needs at least 2 classes (labels), got {num_classes}")
    if embedding_dim < 2:
        raise UserError(f"--embedding-dim must be >= 2, got {embedding_dim}")
    if scale <= 0:
        raise UserError(f"--scale must be > 0, got {scale}")
    backbone, dim = _REGISTRY[name]()
    model = VideoEmbedder(backbone, dim, num_classes, embedding_dim, scale)
    if weights is not None:
        model.weights_loaded = load_weights(model, weights, model_name=name)
    return model


def load_weights(model: VideoEmbedder, path: str | Path, model_name: str | None = None) -> str:
    """Load local weights; no download. Returns what was loaded, in words, for the training log.

    ``path`` is either a plain backbone state dict (optionally under a 'state_dict' or 'model' key), whose matching
    tensors are loaded, or a vidret checkpoint (``format: vidret-checkpoint``): its ``backbone.*`` tensors are
    loaded, all of them, and its embedding neck (``neck.*``: Linear + BatchNorm, independent of the classes) when
    its shapes fit (same ``--embedding-dim``), so fine-tuning starts from the embedding the checkpoint retrieves
    with. The classifier is never loaded: a new run has its own classes. A checkpoint of another architecture, or
    one whose backbone tensors do not fit, is refused with the reason.
    """
    backbone = model.backbone
    path = Path(path)
    state = load_torch_file(path, f"--weights {path}")
    if is_vidret_checkpoint(state):
        state = checked_checkpoint(state, f"--weights {path}")
        _load_vidret_backbone(backbone, state, path, model_name)
        neck = _load_vidret_neck(model.neck, state["model"])
        return (
            "the checkpoint's backbone and embedding neck"
            if neck
            else ("the checkpoint's backbone; a new embedding neck (its size differs from the checkpoint's)")
        )
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"--weights {path}: expected a state dict")
    if isinstance(backbone, TemporalAveragePooling):  # frame backbones take a plain 2D model's weights
        backbone = backbone.frame_model
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"--weights {path}: no tensor matches the backbone's parameters (wrong architecture?)")
    backbone.load_state_dict(usable, strict=False)
    return f"{len(usable)} of the backbone's {len(own)} tensors"


def _load_vidret_backbone(backbone: nn.Module, ck: dict, path: Path, model_name: str | None) -> None:
    """The ``backbone.*`` tensors of a vidret checkpoint, all of them, or a UserError that says what differs."""
    arch = ck.get("arch", {}).get("name") if isinstance(ck.get("arch"), dict) else None
    if model_name is not None and arch is not None and arch != model_name:
        raise UserError(f"--weights {path}: a vidret checkpoint of model {arch!r}, but --model is {model_name!r}")
    model_state = ck.get("model")
    if not isinstance(model_state, dict):
        raise UserError(f"--weights {path}: a vidret checkpoint without its 'model' state dict")
    state = {k[len("backbone.") :]: v for k, v in model_state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        )
        raise UserError(f"--weights {path}: the checkpoint's backbone does not fit this model ({detail})")
    backbone.load_state_dict(state, strict=True)


def _load_vidret_neck(neck: nn.Module, model_state: dict) -> bool:
    """The checkpoint's ``neck.*`` tensors when all of them fit (same embedding size); else the new neck stays."""
    state = {k[len("neck.") :]: v for k, v in model_state.items() if k.startswith("neck.")}
    own = neck.state_dict()
    if set(state) != set(own) or any(own[k].shape != state[k].shape for k in own):
        return False
    neck.load_state_dict(state, strict=True)
    return True
