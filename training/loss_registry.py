"""The loss registry: every loss's name, its options and its constructor, in one place, free of torch.

A loss is one decorated function here; its options become ``TrainConfig`` fields (so ``vidret train`` flags, with
their defaults and help) with no other edit::

    @register_loss("focal", "focal loss", gamma=LossOption("focal_gamma", 2.0, "Focal loss gamma."))
    def _focal(gamma: float = 2.0) -> nn.Module:
        from training.losses import Focal
        return Focal(gamma=gamma)

The constructor imports its ``nn.Module`` (training/losses.py) when it runs, so that listing the losses and their
options (``vidret --help``) does not import torch. An option given as ``None`` is left out of the constructor's
arguments: the constructor's own default applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

IMAE_T_FINETUNE = 8.0  # the T the pretrained clip-level noise benchmark chose on its validation split
IMAE_T_FRAME_FINETUNE = 16.0  # the frame-level benchmark's validation choice (the largest candidate; docs/losses.md)
IMAE_T_SCRATCH = 4.0  # from random weights: T 8 and 16 stalled learning, 2-4 did best (docs/losses.md)


@dataclass(frozen=True)
class LossOption:
    """One option of a loss: the ``TrainConfig`` field (and ``--flag``) that holds it, its default and help."""

    field: str
    default: Any
    help: str
    type: Any = float
    env: str | None = None  # an environment variable the flag reads when it is not given


@dataclass(frozen=True)
class RegisteredLoss:
    name: str
    title: str  # how --loss's help names it, e.g. "ls (label smoothing)"
    build: Callable[..., Any]
    options: Mapping[str, LossOption]  # constructor argument -> option


_REGISTRY: dict[str, RegisteredLoss] = {}


def register_loss(name: str, title: str = "", **options: LossOption) -> Callable[[Callable], Callable]:
    """Decorator: register a loss constructor under ``name`` with its options (constructor argument -> option).
    Losses may share an option (the same ``LossOption``), never a field name with a different option."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise KeyError(f"loss {name!r} is registered twice")
        known = {o.field: o for o in loss_options()}
        for opt in options.values():
            if opt.field in known and known[opt.field] != opt:
                raise KeyError(f"loss {name!r}: option field {opt.field!r} is declared differently by another loss")
        _REGISTRY[name] = RegisteredLoss(name, title or name, fn, dict(options))
        return fn

    return deco


def list_losses() -> list[str]:
    return sorted(_REGISTRY)


def registered_losses() -> list[RegisteredLoss]:
    """Every registered loss, in the order of registration."""
    return list(_REGISTRY.values())


def loss_options() -> list[LossOption]:
    """Every loss option, once, in the order of registration (each is a ``TrainConfig`` field)."""
    seen: dict[str, LossOption] = {}
    for loss in _REGISTRY.values():
        for opt in loss.options.values():
            seen.setdefault(opt.field, opt)
    return list(seen.values())


def loss_kwargs(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of loss ``name`` from option values keyed by field (``None``: left out)."""
    if name not in _REGISTRY:
        return {}
    options = _REGISTRY[name].options
    return {arg: values[o.field] for arg, o in options.items() if values.get(o.field) is not None}


def build_loss(name: str, **kwargs: float | str) -> Any:
    """Build a registered loss by name; unknown names or options raise ``ValueError``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(list_losses())}")
    try:
        return _REGISTRY[name].build(**kwargs)
    except TypeError as exc:  # an option this loss does not take
        raise ValueError(f"loss {name!r}: {exc}") from None


LABEL_SMOOTHING = LossOption(
    "label_smoothing", None, "Label smoothing eps: of --loss ls (default 0.1) or cce (default 0)."
)


@register_loss("cce", label_smoothing=LABEL_SMOOTHING)
def _cce(label_smoothing: float = 0.0) -> Any:
    from training.losses import CCE

    return CCE(label_smoothing=label_smoothing)


@register_loss("ls", "ls (label smoothing)", label_smoothing=LABEL_SMOOTHING)
def _ls(label_smoothing: float = 0.1) -> Any:
    """Label smoothing as its own baseline: CCE against ``(1 - eps) e_y + eps / C``, eps 0.1 by default."""
    from training.losses import CCE

    if float(label_smoothing) <= 0.0:
        raise ValueError(f"ls needs label_smoothing in (0, 1) (0 is plain cce), got {label_smoothing}")
    return CCE(label_smoothing=label_smoothing)


@register_loss("mae")
def _mae() -> Any:
    from training.losses import MAE

    return MAE()


@register_loss("gce", q=LossOption("gce_q", 0.7, "GCE q."))
def _gce(q: float = 0.7) -> Any:
    from training.losses import GCE

    return GCE(q=q)


@register_loss(
    "sce",
    alpha=LossOption("sce_alpha", 0.1, "SCE alpha (CE term)."),
    beta=LossOption("sce_beta", 1.0, "SCE beta (reverse CE term)."),
)
def _sce(alpha: float = 0.1, beta: float = 1.0) -> Any:
    from training.losses import SCE

    return SCE(alpha=alpha, beta=beta)


@register_loss(
    "nce_rce",
    alpha=LossOption("nce_alpha", 1.0, "NCE+RCE alpha (normalised CE term; Ma et al. 2020, CIFAR-10 value)."),
    beta=LossOption("nce_beta", 1.0, "NCE+RCE beta (reverse CE term, log 0 clipped to -4)."),
)
def _nce_rce(alpha: float = 1.0, beta: float = 1.0) -> Any:
    from training.losses import NCERCE

    return NCERCE(alpha=alpha, beta=beta)


@register_loss(
    "imae",
    t=LossOption(
        "imae_t",
        None,
        f"IMAE temperature T: weight exp(T p_y (1 - p_y)). Default: {IMAE_T_FINETUNE:g} when fine-tuning from "
        f"--weights ({IMAE_T_FRAME_FINETUNE:g} with --loss-level frame), each chosen on the validation split of "
        f"the pretrained noise benchmark at that loss level; {IMAE_T_SCRATCH:g} from random weights (where 8 and "
        "above stalled learning). See docs/losses.md, Choosing T.",
        env="VIDRET_IMAE_T",
    ),
    normalize=LossOption(
        "imae_normalize", "weight", "IMAE batch reduction: weight (divide by total weight) | mean.", str
    ),
)
def _imae(t: float = IMAE_T_FINETUNE, normalize: str = "weight") -> Any:
    from training.losses import IMAE

    return IMAE(t=t, normalize=normalize)
