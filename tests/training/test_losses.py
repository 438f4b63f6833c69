"""The loss family against the closed forms of docs/losses.md (paper Table 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import SCE, build_loss, list_losses


def _logits(n: int = 64, c: int = 7, seed: int = 0, extreme: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, c, (n,), generator=g)
    if extreme:  # p_y -> 1 and p_y -> 0
        z[0] = -60.0
        z[0, y[0]] = 60.0
        z[1] = 60.0
        z[1, y[1]] = -60.0
        z[2, y[2]] = 60.0
    return z, y


def _grad(loss, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    loss(z, y).backward()
    return z.grad


def _parts(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = z.softmax(1)
    onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    return p, onehot, p_y


def test_registry_lists_every_loss_and_rejects_unknown() -> None:
    assert list_losses() == ["cce", "gce", "imae", "ls", "mae", "nce_rce", "sce"]
    with pytest.raises(ValueError, match="unknown loss 'ce'"):
        build_loss("ce")
    with pytest.raises(ValueError, match="imae"):
        build_loss("imae", q=0.5)


def test_cce_gradient_is_p_minus_onehot() -> None:
    z, y = _logits()
    p, onehot, _ = _parts(z, y)
    n = z.shape[0]
    assert torch.allclose(_grad(build_loss("cce"), z, y), (p - onehot) / n, atol=1e-12)


def test_mae_gradient_closed_form() -> None:
    z, y = _logits()
    p, onehot, p_y = _parts(z, y)
    n = z.shape[0]
    expected = 2 * p_y[:, None] * p * (1 - onehot) + onehot * (2 * p_y * (p_y - 1))[:, None]
    assert torch.allclose(_grad(build_loss("mae"), z, y), expected / n, atol=1e-12)


@pytest.mark.parametrize("normalize", ["weight", "mean"])
@pytest.mark.parametrize("t", [0.5, 8.0, 24.0])
def test_imae_gradient_closed_form(t: float, normalize: str) -> None:
    z, y = _logits()
    p, onehot, p_y = _parts(z, y)
    w = torch.exp(t * p_y * (1 - p_y))
    # off-target: w * p_j / (2 (1 - p_y)) computed as the softmax over the non-target logits (exact even at p_y = 1)
    others = z.masked_fill(onehot.bool(), float("-inf")).softmax(1)
    per_sample = (w / 2)[:, None] * others - onehot * (w / 2)[:, None]
    denom = w.sum() if normalize == "weight" else z.shape[0]
    loss = build_loss("imae", t=t, normalize=normalize)
    grad = _grad(loss, z, y)
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad, per_sample / denom, atol=1e-12)
    # where p_y is not saturated, the off-target entries equal w p_j / (2 (1 - p_y)) literally
    ok = (1 - p_y) > 1e-6
    literal = (w / 2 / (1 - p_y))[:, None] * p * (1 - onehot) - onehot * (w / 2)[:, None]
    assert torch.allclose(grad[ok], literal[ok] / denom, atol=1e-10)
    # the L1 norm of each sample's gradient is its weight
    l1 = (grad * denom).abs().sum(1)
    assert torch.allclose(l1, w, atol=1e-10)
    assert torch.allclose(loss.sample_weights(z, y), w)


def test_sample_weights_match_table_2() -> None:
    z, y = _logits(extreme=False)
    p, onehot, p_y = _parts(z, y)
    for name, kwargs, expected in [
        ("cce", {}, 2 * (1 - p_y)),
        ("mae", {}, 4 * p_y * (1 - p_y)),
        ("imae", {"t": 4.0}, torch.exp(4.0 * p_y * (1 - p_y))),
    ]:
        loss = build_loss(name, **kwargs)
        assert torch.allclose(loss.sample_weights(z, y), expected), name
        # and the weight really is the L1 norm of the per-sample gradient (per-sample: sum reduction)
        if name != "imae":
            grad = _grad(loss, z, y) * z.shape[0]
            assert torch.allclose(grad.abs().sum(1), expected, atol=1e-10), name


def test_gce_matches_published_formula() -> None:
    z, y = _logits(extreme=False)
    _, _, p_y = _parts(z, y)
    for q in (0.3, 0.7, 1.0):
        loss = build_loss("gce", q=q)
        assert torch.allclose(loss(z, y), ((1 - p_y**q) / q).mean())
        grad = _grad(loss, z, y) * z.shape[0]
        assert torch.allclose(grad.abs().sum(1), loss.sample_weights(z, y), atol=1e-10)
    # q = 1 is MAE / 2
    assert torch.allclose(build_loss("gce", q=1.0)(z, y), build_loss("mae")(z, y) / 2)


def test_sce_matches_published_formula() -> None:
    z, y = _logits(extreme=False)
    p, onehot, _ = _parts(z, y)
    alpha, beta = 0.1, 1.0
    ce = F.cross_entropy(z, y, reduction="none")
    rce = -(p * torch.log(onehot.clamp(min=1e-4, max=1.0))).sum(1)  # the authors' implementation
    loss = build_loss("sce", alpha=alpha, beta=beta)
    assert torch.allclose(loss(z, y), (alpha * ce + beta * rce).mean())
    grad = _grad(loss, z, y) * z.shape[0]
    assert torch.allclose(grad.abs().sum(1), loss.sample_weights(z, y), atol=1e-10)
    assert math.isclose(SCE.A, math.log(1e-4))


def test_label_smoothing_matches_torch() -> None:
    z, y = _logits(extreme=False)
    loss = build_loss("cce", label_smoothing=0.1)
    assert torch.allclose(loss(z, y), F.cross_entropy(z, y, label_smoothing=0.1))
    grad = _grad(loss, z, y) * z.shape[0]
    assert torch.allclose(grad.abs().sum(1), loss.sample_weights(z, y), atol=1e-10)


def test_ls_is_label_smoothed_cce_with_its_own_default() -> None:
    z, y = _logits(extreme=False)
    assert torch.allclose(build_loss("ls")(z, y), F.cross_entropy(z, y, label_smoothing=0.1))
    assert torch.allclose(build_loss("ls", label_smoothing=0.3)(z, y), F.cross_entropy(z, y, label_smoothing=0.3))
    with pytest.raises(ValueError, match="plain cce"):
        build_loss("ls", label_smoothing=0.0)


def test_nce_rce_matches_ma_et_al() -> None:
    z, y = _logits(extreme=True)
    p, onehot, p_y = _parts(z, y)
    log_p = z.log_softmax(1)
    nce = -log_p.gather(1, y[:, None]).squeeze(1) / (-log_p).sum(1)
    rce = -(p * torch.log(onehot.clamp(min=math.exp(-4.0)))).sum(1)  # log 0 clipped to A = -4
    assert torch.allclose(rce, 4 * (1 - p_y))
    assert ((nce >= 0) & (nce <= 1)).all()  # normalised over all possible labels (0 where p_y rounds to 1)
    assert torch.allclose(build_loss("nce_rce")(z, y), (nce + rce).mean())  # alpha = beta = 1
    loss = build_loss("nce_rce", alpha=10.0, beta=0.1)
    assert torch.allclose(loss(z, y), (10 * nce + 0.1 * rce).mean())
    grad = _grad(loss, z, y) * z.shape[0]
    assert torch.isfinite(grad).all()
    assert torch.allclose(grad.abs().sum(1), loss.sample_weights(z, y), atol=1e-10)
    with pytest.raises(ValueError, match="alpha and beta"):
        build_loss("nce_rce", alpha=-1.0)


def test_imae_small_t_points_along_cce() -> None:
    z, y = _logits(extreme=False)
    g_imae = _grad(build_loss("imae", t=1e-9, normalize="mean"), z, y)
    g_cce = _grad(build_loss("cce"), z, y)
    # per sample, IMAE's gradient is CCE's scaled by 1 / (2 (1 - p_y)) (w -> 1): same direction
    cos = F.cosine_similarity(g_imae, g_cce, dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-9)


def test_half_precision_logits_give_finite_float32_gradients() -> None:
    z, y = _logits(extreme=True)
    for dtype in (torch.bfloat16, torch.float16):
        zh = z.to(dtype).requires_grad_(True)
        loss = build_loss("imae", t=16.0)(zh, y)
        assert loss.dtype == torch.float32
        loss.backward()
        assert torch.isfinite(zh.grad.float()).all()
    z64 = z.clone().requires_grad_(True)
    out = build_loss("imae")(z64, y)
    assert out.dtype == torch.float64


@pytest.mark.parametrize("name", ["cce", "ls", "mae", "gce", "sce", "nce_rce", "imae"])
def test_bad_labels_name_the_label(name: str) -> None:
    z = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="label 4 is outside"):
        build_loss(name)(z, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="label -1 is outside"):
        build_loss(name)(z, torch.tensor([-1, 0, 1]))


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="normalize"):
        build_loss("imae", normalize="sum")
    with pytest.raises(ValueError, match="t must"):
        build_loss("imae", t=-1)
    with pytest.raises(ValueError, match="q must"):
        build_loss("gce", q=0)


def test_train_flags_reach_the_new_losses() -> None:
    from training.config import TrainConfig

    base = {"train": "t.csv", "out": "o"}
    assert TrainConfig(**base, loss="ls").loss_kwargs() == {}  # ls's own default, 0.1
    assert TrainConfig(**base, loss="ls", label_smoothing=0.2).loss_kwargs() == {"label_smoothing": 0.2}
    assert TrainConfig(**base, loss="cce").loss_kwargs() == {}  # cce's own default, 0
    cfg = TrainConfig(**base, loss="nce_rce", nce_alpha=10.0, nce_beta=0.1)
    assert cfg.loss_kwargs() == {"alpha": 10.0, "beta": 0.1}
    cfg.validate()
