"""Small runtime helpers for training and inference: device and precision choice, DDP set-up, atomic checkpoints
(the checkpoint format itself: ``training/checkpoint.py``)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from indexing.atomic import atomic_write
from indexing.errors import UserError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
log = logging.getLogger(__name__)


def select_device(spec: str = "auto", local_rank: int = 0, cuda_available: bool | None = None) -> torch.device:
    """``auto``: the GPU of this process's local rank when CUDA is available, else the CPU."""
    if spec not in DEVICES and not spec.startswith("cuda:"):
        raise UserError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {spec!r}")
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if spec == "cpu" or (spec == "auto" and not has_cuda):
        return torch.device("cpu")
    if not has_cuda:
        raise UserError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
    return torch.device(spec if spec.startswith("cuda:") else f"cuda:{local_rank}")


def resolve_precision(spec: str, device: torch.device, bf16_supported: bool | None = None) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 (with a gradient scaler) on other GPUs, fp32 on the CPU."""
    if spec not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {spec!r}")
    if device.type != "cuda":
        if spec == "fp16":
            raise UserError("--precision fp16 needs a GPU (use fp32 or bf16 on the CPU)")
        if spec == "bf16":  # tests/gpu/test_precision.py: the bf16 test on the CPU runs with oneDNN off for this
            log.warning(
                "--precision bf16 on the CPU: oneDNN's bf16 convolution backward gave weight gradients up to 100x "
                "off fp32's on a CPU with native bf16 (AVX512-BF16); fp32, the CPU default, is the safe choice"
            )
        return "fp32" if spec == "auto" else spec
    if spec != "auto":
        return spec
    supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
    return "bf16" if supported else "fp16"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_spec: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_nccl = device_spec != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return info


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save atomically (indexing/atomic.py): a kill leaves the old file intact."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
