"""The GPU tests: marked ``gpu``, skipped with the reason wherever torch sees no CUDA GPU (``make test`` on a CPU
machine); ``benchmarks/gpu_check.sh`` runs them on a GPU.

``VIDRET_REQUIRE_GPU=1`` turns that skip into an error (the check script sets it on a GPU machine, so a GPU test
that cannot reach the GPU fails rather than passes by skipping). ``VIDRET_GPU_DATA`` names a dataset folder
(train.csv, query.csv, gallery.csv; e.g. one carried to a machine without PyAV); without it one is synthesised once
per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gpu.helpers import fit_on_gpu

# cuBLAS is deterministic only with a fixed workspace, set before CUDA starts (the exact-resume test needs it)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def cuda_missing_reason() -> str | None:
    """None where a CUDA GPU is usable, else why not (the skip reason)."""
    import torch

    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    return (
        "needs a CUDA GPU: torch.cuda.is_available() is False (torch "
        + torch.__version__
        + (f", built for CUDA {built}: no GPU or driver here)" if built else ", a CPU-only build)")
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = cuda_missing_reason()
    if reason is None:
        return
    if os.environ.get("VIDRET_REQUIRE_GPU") == "1":
        raise pytest.UsageError(f"VIDRET_REQUIRE_GPU=1, but the tests marked gpu cannot run: {reason}")
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def gpu_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$VIDRET_GPU_DATA, else 12 identities (6 train), 2 cameras, 2 clips each: 16 frames of 128 px, 20% noise."""
    given = os.environ.get("VIDRET_GPU_DATA")
    if given:
        folder = Path(given)
        lacking = [f for f in ("train.csv", "query.csv", "gallery.csv") if not (folder / f).is_file()]
        assert not lacking, f"VIDRET_GPU_DATA={given} lacks {', '.join(lacking)}"
        return folder
    try:
        import av  # noqa: F401 - PyAV writes the videos
    except ImportError:
        pytest.fail("no dataset: set VIDRET_GPU_DATA to a dataset folder, or install PyAV (av) to synthesise one")
    from training.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("gpu_data")
    generate(
        out,
        SynthConfig(identities=12, cameras=2, clips_per_camera=2, frames=16, size=128, noise=0.2, seed=0),
        workers=min(8, os.cpu_count() or 1),
    )
    return out


@pytest.fixture
def deterministic() -> Iterator[None]:
    """cuDNN and every other op that has one on its deterministic algorithm (warning where there is none)."""
    import torch

    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


@pytest.fixture(scope="session")
def gpu_run(gpu_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """tiny3d, two epochs on the GPU with 4 DataLoader workers, --precision auto, validated every epoch."""
    return fit_on_gpu(
        gpu_data,
        tmp_path_factory.mktemp("gpu_run") / "run",
        val_query=str(gpu_data / "query.csv"),
        val_gallery=str(gpu_data / "gallery.csv"),
    )
