"""`vidret data synth|check|manifest|noise|import-mars` through the real command line."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_synth_writes_real_videos_with_disjoint_identities_and_noise(synth_dir: Path) -> None:
    train, query, gallery = (_rows(synth_dir / f"{s}.csv") for s in ("train", "query", "gallery"))
    assert len(train) == 6 * 2 * 2 and len(query) == 6 and len(gallery) == 18
    train_ids = {r["clean_label"] for r in train}
    assert train_ids.isdisjoint({r["label"] for r in query + gallery})
    assert sum(r["label"] != r["clean_label"] for r in train) == round(0.25 * len(train))
    assert (synth_dir / train[0]["path"]).read_bytes()[4:8] == b"ftyp"  # a real mp4
    res = run_cli("data", "check", synth_dir / "train.csv")
    assert res.returncode == 0 and "all 24 rows decode" in res.stdout


def test_synth_is_deterministic(tmp_path: Path) -> None:
    # 128 clips, serial and in a process pool: x264's rate control (crf) once changed a few clips, most across processes
    for name, workers in (("a", "1"), ("b", "2")):
        res = run_cli(
            "data",
            "synth",
            tmp_path / name,
            "--identities",
            "8",
            "--cameras",
            "4",
            "--clips-per-camera",
            "4",
            "--frames",
            "8",
            "--size",
            "32",
            "--noise",
            "0.5",
            "--seed",
            "3",
            "--workers",
            workers,
        )
        assert res.returncode == 0, res.stderr
    assert (tmp_path / "a" / "train.csv").read_text() == (tmp_path / "b" / "train.csv").read_text()
    a = sorted((tmp_path / "a").rglob("*.mp4"))
    assert [p.read_bytes() for p in a] == [(tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in a]


def test_check_lists_every_bad_row(synth_dir: Path, tmp_path: Path) -> None:
    good = _rows(synth_dir / "gallery.csv")[:2]
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "zero.mp4").write_bytes(b"")
    lines = ["path,id,label"] + [f"{synth_dir / r['path']},{r['id']},{r['label']}" for r in good]
    lines += [f"{tmp_path / 'text.mp4'},t,x", f"{tmp_path / 'zero.mp4'},z,x", f"{tmp_path / 'gone.mp4'},g,x"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    res = run_cli("data", "check", tmp_path / "m.csv")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    for row, reason in [(3, "cannot decode video"), (4, "empty file"), (5, "file not found")]:
        assert f"row {row} " in res.stderr and reason in res.stderr
    assert "error: 3 of 5 rows cannot be decoded" in res.stderr


@pytest.mark.parametrize(
    "text,needle",
    [
        ("label\nx\n", "missing required column 'path'"),
        ("path,id\na.mp4,1\nb.mp4,1\n", "row 2: duplicate id '1'"),
        ("", "has no rows"),
    ],
)
def test_bad_manifest_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    res = run_cli("data", "check", tmp_path / "m.csv")
    assert res.returncode == 1 and needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_noise_and_manifest_commands(synth_dir: Path, tmp_path: Path) -> None:
    res = run_cli("data", "noise", synth_dir / "gallery.csv", tmp_path / "noisy.csv", "--rate", "0.5", "--seed", "1")
    assert res.returncode == 0 and "realised noise rate 0.5000 (9 of 18 labels changed)" in res.stdout
    rows = _rows(tmp_path / "noisy.csv")
    assert sum(r["label"] != r["clean_label"] for r in rows) == 9
    res = run_cli("data", "noise", synth_dir / "gallery.csv", tmp_path / "x.csv", "--rate", "2")
    assert res.returncode == 1 and "rate" in res.stderr
    tree = tmp_path / "tree"
    for label in ("cat", "dog"):
        (tree / label).mkdir(parents=True)
        shutil.copy(synth_dir / _rows(synth_dir / "gallery.csv")[0]["path"], tree / label / "clip.mp4")
    res = run_cli("data", "manifest", tree)
    assert res.stdout.splitlines() == [
        "path,id,label",
        "cat/clip.mp4,cat:clip.mp4,cat",
        "dog/clip.mp4,dog:clip.mp4,dog",
    ]


def test_import_mars_fabricated_tree(tmp_path: Path) -> None:
    import scipy.io

    root = tmp_path / "MARS"
    names = {"train": [], "test": []}
    for split, pids in (("train", [1, 2]), ("test", [0, 3, 4, -1])):
        for pid in pids:
            folder = root / f"bbox_{split}" / (f"{pid:04d}" if pid >= 0 else "00-1")
            folder.mkdir(parents=True, exist_ok=True)
            for cam in (1, 2):
                for f in range(3):
                    name = f"{pid:04d}C{cam}T0001F{f + 1:03d}.jpg" if pid >= 0 else f"00-1C{cam}T0001F{f + 1:03d}.jpg"
                    Image.fromarray(np.full((16, 8, 3), 40 * cam, np.uint8)).save(folder / name)
                    names[split].append(name)
    (root / "info").mkdir()
    for split in ("train", "test"):
        (root / "info" / f"{split}_name.txt").write_text("\n".join(names[split]) + "\n")
    tracks = {
        "train": [[1, 3, 1, 1], [4, 6, 1, 2], [7, 9, 2, 1], [10, 12, 2, 2]],
        "test": [
            [1, 3, 0, 1],
            [4, 6, 0, 2],
            [7, 9, 3, 1],
            [10, 12, 3, 2],
            [13, 15, 4, 1],
            [16, 18, 4, 2],
            [19, 21, -1, 1],
            [22, 24, -1, 2],
        ],
    }
    for split, rows in tracks.items():
        scipy.io.savemat(root / "info" / f"tracks_{split}_info.mat", {f"track_{split}_info": np.array(rows)})
    scipy.io.savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.array([[3, 5]])})
    out = tmp_path / "out"
    res = run_cli("data", "import-mars", root, out)
    assert res.returncode == 0, res.stderr
    train, query, gallery = (_rows(out / f"{s}.csv") for s in ("train", "query", "gallery"))
    assert len(train) == 4 and {r["label"] for r in train} == {"0001", "0002"}
    assert [(r["label"], r["camera"]) for r in query] == [("0003", "c1"), ("0004", "c1")]
    assert sorted(r["label"] for r in gallery) == ["0000", "0000", "0003", "0004"]  # junk (-1) dropped
    res = run_cli("data", "check", out / "gallery.csv")
    assert res.returncode == 0, res.stderr
    res = run_cli("data", "import-mars", tmp_path, out)
    assert res.returncode == 1 and "not a MARS root" in res.stderr
