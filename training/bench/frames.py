"""Outlier frames in the noise benchmark (``--noise frames:RATE``): the video noise of the IMAE paper's MARS claim.

The labels stay right; instead a share RATE of every fine-tuning clip's frames shows the camera's background only
or another training identity (``vidret data synth --frame-noise``). One set of outlier frames is drawn per (rate,
seed), with the same generator seed rule as the label noise, by rendering the fine-tuning clips again
(``render_frame_noise``: the clean frames are those of the clean dataset). Memorisation is then measured per frame:
the share of outlier frames that the final model, frame by frame, predicts as their clip's label.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from indexing.atomic import atomic_write_text
from indexing.errors import UserError
from training.data.manifest import VideoRow

FRAME_NOISE = "frames"


def frame_noise_rows(
    scfg, folder: Path, rows: list[VideoRow], rate: float, seed: int, report_only: bool = False
) -> tuple[list[VideoRow], float]:
    """``rows`` with their videos replaced by versions with outlier frames (rendered once into ``folder``, reused
    while ``folder/frames.json`` records the same settings) and ``outlier_frames`` set; the realised frame share."""
    from training.data.synth import render_frame_noise

    stamp = folder / "frames.json"
    settings = {"synth": asdict(scfg), "rate": rate, "seed": seed}
    record = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if record.get("settings") != settings:
        if report_only:  # never rendered, so none of its cells has run: --report-only lists them as not run
            return list(rows), float("nan")
        names = {r.clean_label or r.label for r in rows}
        clips = render_frame_noise(scfg, folder, names, rate, seed)
        record = {"settings": settings, "clips": {k: [p, list(o)] for k, p, o in _flat(clips)}}
        atomic_write_text(stamp, json.dumps(record))
    clips = record["clips"]
    missing = [r.id for r in rows if r.id not in clips]
    if missing:
        raise UserError(f"{stamp}: no outlier-frame video for {missing[0]} (and {len(missing) - 1} more)")
    out = [
        replace(
            r,
            path=clips[r.id][0],
            clean_label=r.clean_label or r.label,
            outlier_frames=tuple(clips[r.id][1]),
        )
        for r in rows
    ]
    share = sum(len(r.outlier_frames or ()) for r in out) / (len(out) * scfg.frames)
    return out, share


def _flat(clips: dict) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(k, p, o) for k, (p, o) in clips.items()]


def frame_memorisation(
    run: Path, rows: list[VideoRow], loss: str, t: float, video_frames: int, batch_size: int
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The final model over every frame of its training clips, frame by frame (the frame-level classifier): accuracy
    against the clip's label on clean frames and on outlier frames (the share of outlier frames memorised), each
    frame's final sample weight, and the outlier mask (as ``grid.memorisation``, per frame)."""
    import torch

    from training.data.video import ClipSpec
    from training.embed import eval_loader, load_checkpoint
    from training.losses import build_loss

    loaded = load_checkpoint(run / "checkpoints" / "last.pt", "auto")
    cmap = {c: i for i, c in enumerate(loaded.class_names)}
    spec = ClipSpec(frames=video_frames, size=loaded.spec.size, sampling="uniform")
    loader = eval_loader(rows, spec, batch_size, 0, loaded.mean, loaded.std, class_to_idx=cmap, cache=True)
    logits, targets, flags = [], [], []
    loaded.model.eval()
    with torch.no_grad():
        for batch in loader:
            x = batch["clip"].to(loaded.device)
            _, lg = loaded.model(x, per_frame=True)
            logits.append(lg.float().cpu())
            targets.append(batch["target"].repeat_interleave(x.shape[2]))
            flags.append(batch["outlier"].reshape(-1))
    lg, y, flag = torch.cat(logits), torch.cat(targets), torch.cat(flags).numpy()
    correct = (lg.argmax(1) == y).numpy()
    outlier = flag == 1
    kwargs = {"t": t} if loss == "imae" else {}
    weights = build_loss(loss, **kwargs).sample_weights(lg, y).numpy()
    acc = lambda m: float(correct[m].mean()) if m.any() else float("nan")  # noqa: E731
    return acc(flag == 0), acc(outlier), weights, outlier
