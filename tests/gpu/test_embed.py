"""Embedding on the GPU gives the CPU's embeddings (within TF32's rounding); FAISS on the GPU, where it is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.gpu.helpers import embedding_agreement
from training.data.manifest import read_manifest
from training.embed import embed_manifest, embed_video, load_checkpoint

pytestmark = pytest.mark.gpu

# cuDNN's convolutions run in TF32 by default (10-bit mantissa); embeddings are L2-normalised
MAX_ABS, MIN_COS = 5e-3, 0.9995


def test_gpu_embeddings_equal_cpu_embeddings(gpu_run, gpu_data: Path, tmp_path: Path) -> None:
    ckpt = gpu_run.last_checkpoint
    out = {}
    for device in ("cpu", "cuda"):
        out[device] = embed_manifest(
            ckpt, gpu_data / "gallery.csv", tmp_path / f"{device}.npz", batch_size=8, workers=2, device=device
        )
    cpu, gpu = out["cpu"], out["cuda"]
    assert list(cpu.ids) == list(gpu.ids) and len(cpu.ids) == len(read_manifest(gpu_data / "gallery.csv"))
    max_abs, min_cos = embedding_agreement(cpu.embeddings, gpu.embeddings)
    assert max_abs <= MAX_ABS and min_cos >= MIN_COS, f"GPU vs CPU: max |diff| {max_abs:.2e}, min cosine {min_cos:.6f}"


def test_the_service_path_embeds_a_video_alike_on_gpu_and_cpu(gpu_run, gpu_data: Path) -> None:
    rows = read_manifest(gpu_data / "query.csv")[:3]
    models = {d: load_checkpoint(gpu_run.last_checkpoint, device=d) for d in ("cpu", "cuda")}
    assert models["cuda"].device.type == "cuda"
    vecs = {d: np.stack([embed_video(m, r.path) for r in rows]) for d, m in models.items()}
    max_abs, min_cos = embedding_agreement(vecs["cpu"], vecs["cuda"])
    assert max_abs <= MAX_ABS and min_cos >= MIN_COS, f"GPU vs CPU: max |diff| {max_abs:.2e}, min cosine {min_cos:.6f}"


def test_faiss_on_the_gpu_finds_what_the_cpu_index_finds(tmp_path: Path) -> None:
    try:
        import faiss  # noqa: F401
    except ImportError:
        pytest.skip(
            "faiss is not installed here (a GPU build, faiss-gpu-cu12, needs the CUDA 12 runtime and cuBLAS "
            "wheels: far beyond a 64 MiB carry)"
        )
    from indexing.embeddings import Embeddings
    from indexing.faiss_factory import gpu_available
    from indexing.faiss_index import VideoIndex

    if not gpu_available():
        pytest.skip("this faiss has no GPU support (faiss-cpu); install faiss-gpu-cu12 for the GPU index")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(2000, 64)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    emb = Embeddings(
        ids=[f"v{i}" for i in range(len(vecs))], embeddings=vecs, labels=["a"] * len(vecs), cameras=["c1"] * len(vecs)
    )
    queries = vecs[:50] + 0.01 * rng.normal(size=(50, 64)).astype(np.float32)
    hits = {}
    for gpu in (False, True):
        ix = VideoIndex.build(emb, tmp_path / f"gpu{gpu}", type="flat", gpu=gpu)
        hits[gpu] = ix.search(queries, k=10)
    for cpu_hits, gpu_hits in zip(hits[False], hits[True], strict=True):
        assert [h.id for h in cpu_hits] == [h.id for h in gpu_hits]
        np.testing.assert_allclose([h.score for h in cpu_hits], [h.score for h in gpu_hits], atol=1e-4)
