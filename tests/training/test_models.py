"""Every registered backbone builds and embeds; the head's embedding is normalised and its logits bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from indexing.errors import UserError
from training.models import build_model, list_models

# the smallest input each backbone accepts (mvit_v2_s is built for 16 x 224 x 224)
SIZES = {"mvit_v2_s": (16, 224), "s3d": (8, 64), "swin3d_t": (4, 64)}


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_and_runs_forward(name: str) -> None:
    torch.manual_seed(0)
    t, s = SIZES.get(name, (4, 32))
    model = build_model(name, num_classes=5, embedding_dim=16, scale=10.0).eval()
    with torch.no_grad():
        emb, logits = model(torch.randn(2, 3, t, s, s))
    assert emb.shape == (2, 16) and logits.shape == (2, 5)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert logits.abs().max() <= 10.0 + 1e-4  # cosine classifier: |logit| <= scale


def test_registry_lists_the_contract_models() -> None:
    assert {
        "r3d_18",
        "mc3_18",
        "r2plus1d_18",
        "s3d",
        "mvit_v2_s",
        "swin3d_t",
        "resnet18-tap",
        "resnet50-tap",
        "tiny3d",
    } <= set(list_models())


def test_local_weights_load_and_errors(tmp_path: Path) -> None:
    src = build_model("tiny3d", num_classes=3)
    torch.save({"state_dict": src.backbone.state_dict()}, tmp_path / "w.pt")
    dst = build_model("tiny3d", num_classes=3, weights=tmp_path / "w.pt")
    for a, b in zip(src.backbone.state_dict().values(), dst.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    n = len(src.backbone.state_dict())
    assert dst.weights_loaded == f"{n} of the backbone's {n} tensors"
    with pytest.raises(UserError, match="file not found"):
        build_model("tiny3d", num_classes=3, weights=tmp_path / "nope.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="no tensor matches"):
        build_model("tiny3d", num_classes=3, weights=tmp_path / "other.pt")
    with pytest.raises(UserError, match="unknown model 'resnet9000'"):
        build_model("resnet9000", num_classes=3)


def test_weights_accept_a_vidret_checkpoint_and_refuse_another_architecture(tmp_path: Path) -> None:
    src = build_model("tiny3d", num_classes=5)
    ck = {
        "format": "vidret-checkpoint",
        "version": 2,
        "arch": {"name": "tiny3d", "num_classes": 5},
        "model": src.state_dict(),
    }
    torch.save(ck, tmp_path / "last.pt")
    # other classes: backbone and embedding neck, a new classifier
    dst = build_model("tiny3d", num_classes=3, weights=tmp_path / "last.pt")
    for part in ("backbone", "neck"):
        ours, theirs = getattr(src, part).state_dict(), getattr(dst, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert dst.classifier.weight.shape == (3, 256)
    assert dst.weights_loaded == "the checkpoint's backbone and embedding neck"  # what training prints
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():  # the same embedding as the checkpoint's model: retrieval starts where pretraining ended
        assert torch.allclose(src.eval().embed(x), dst.eval().embed(x), atol=1e-6)
    other_dim = build_model("tiny3d", num_classes=3, embedding_dim=64, weights=tmp_path / "last.pt")
    assert torch.equal(other_dim.backbone.features[0].weight, src.backbone.features[0].weight)
    assert other_dim.neck[0].weight.shape == (64, src.neck[0].weight.shape[1])  # another size: a new neck
    assert "a new embedding neck" in other_dim.weights_loaded
    with pytest.raises(UserError, match="model 'tiny3d', but --model is 'r3d_18'"):
        build_model("r3d_18", num_classes=3, weights=tmp_path / "last.pt")
    state = {k: v for k, v in src.state_dict().items() if k != "backbone.features.0.weight"}
    torch.save({**ck, "arch": {}, "model": state}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="does not fit this model.*missing: features.0.weight"):
        build_model("tiny3d", num_classes=3, weights=tmp_path / "partial.pt")
