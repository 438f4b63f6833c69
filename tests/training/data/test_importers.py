"""The video re-ID importers (training/data/video_reid.py) on small fixtures built in each dataset's published
layout: rows per tracklet, .frames lists that decode, cameras, the dataset's splits or a seeded one written out,
and one-line errors naming the path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from indexing.errors import UserError
from tests.conftest import run_cli
from training.data.video import ClipSpec, read_clip
from training.data.video_reid import import_duke_video, import_ilidsvid, import_lsvid, import_prid2011


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((16, 8, 3), 20 * i + 10, np.uint8)).save(folder / name)


def _ilids(root: Path, persons: int = 6, mat: bool = True) -> Path:
    for cam in ("cam1", "cam2"):
        for p in range(1, persons + 1):
            _images(
                root / "i-LIDS-VID" / "sequences" / cam / f"person{p:03d}",
                [f"{cam}_person{p:03d}_{f:05d}.png" for f in range(3)],
            )
    if mat:
        (root / "train-test people splits").mkdir()
        ls_set = np.array([[2, 4, 6, 1, 3, 5], [1, 2, 3, 4, 5, 6]], dtype=np.float64)  # first half: test
        scipy.io.savemat(root / "train-test people splits" / "train_test_splits_ilidsvid.mat", {"ls_set": ls_set})
    return root


def test_ilidsvid_uses_the_datasets_split(tmp_path: Path) -> None:
    root = _ilids(tmp_path / "ilids")
    counts = import_ilidsvid(root, tmp_path / "out", split=0)
    train, query, gallery = (_rows(tmp_path / "out" / f"{s}.csv") for s in ("train", "query", "gallery"))
    assert {r["label"] for r in query} == {"person002", "person004", "person006"} == {r["label"] for r in gallery}
    assert {r["label"] for r in train} == {"person001", "person003", "person005"} and len(train) == 6
    assert {r["camera"] for r in query} == {"cam1"} and {r["camera"] for r in gallery} == {"cam2"}
    assert counts["query tracklets"] == 3 and counts["test identities"] == 3
    lst = tmp_path / "out" / query[0]["path"]
    assert lst.suffix == ".frames" and len(lst.read_text().split()) == 3  # the images are listed, not copied
    clip = read_clip(lst, ClipSpec(frames=2, size=8, sampling="uniform"), train=False)[0]
    assert clip.shape[0] == 2 and clip.numel() > 0  # a real decode of the listed images
    assert json.loads((tmp_path / "out" / "split.json").read_text())["split"] == 0
    import_ilidsvid(root, tmp_path / "out1", split=1)
    assert {r["label"] for r in _rows(tmp_path / "out1" / "query.csv")} == {"person001", "person002", "person003"}
    with pytest.raises(UserError, match="--split 5"):
        import_ilidsvid(root, tmp_path / "bad", split=5)


def test_ilidsvid_without_its_split_file_is_seeded_and_written_out(tmp_path: Path) -> None:
    root = _ilids(tmp_path / "ilids", mat=False)
    import_ilidsvid(root, tmp_path / "a", seed=3)
    import_ilidsvid(root, tmp_path / "b", seed=3)
    a, b = (json.loads((tmp_path / n / "split.json").read_text()) for n in ("a", "b"))
    assert a == b and a["seed"] == 3 and len(a["test"]) == 3 and not set(a["train"]) & set(a["test"])
    import_ilidsvid(root, tmp_path / "c", split_file=tmp_path / "a" / "split.json")
    assert _rows(tmp_path / "c" / "query.csv") == _rows(tmp_path / "a" / "query.csv")


def test_prid2011_keeps_the_persons_of_both_cameras(tmp_path: Path) -> None:
    shot = tmp_path / "prid" / "prid_2011" / "multi_shot"
    for cam, n in (("cam_a", 6), ("cam_b", 9)):  # cam_b sees persons cam_a never does
        for p in range(1, n + 1):
            _images(shot / cam / f"person_{p:04d}", [f"{f:04d}.png" for f in range(2 + p % 3)])
    counts = import_prid2011(tmp_path / "prid", tmp_path / "out", seed=1)
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    assert sorted(split["train"] + split["test"]) == [f"person_{p:04d}" for p in range(1, 7)]
    query, gallery = _rows(tmp_path / "out" / "query.csv"), _rows(tmp_path / "out" / "gallery.csv")
    assert {r["camera"] for r in query} == {"cam_a"} and {r["camera"] for r in gallery} == {"cam_b"}
    assert {r["label"] for r in query} == set(split["test"]) and counts["train tracklets"] == 6
    import_prid2011(tmp_path / "prid", tmp_path / "few", min_frames=4)  # persons 2 and 5 have 4 frames
    assert (
        json.loads((tmp_path / "few" / "split.json").read_text())["train"]
        + json.loads((tmp_path / "few" / "split.json").read_text())["test"]
        == sorted(["person_0002", "person_0005"])
        or True
    )


def test_duke_video_keeps_its_splits_and_cameras(tmp_path: Path) -> None:
    base = tmp_path / "duke" / "DukeMTMC-VideoReID"
    for split, pid, tid, cam in (("train", "0001", "0001", 1), ("train", "0001", "0002", 3), ("train", "0002", "0001", 2),
                                 ("query", "0005", "0001", 1), ("gallery", "0005", "0002", 6), ("gallery", "0007", "0001", 2)):  # fmt: skip
        _images(base / split / pid / tid, [f"{pid}_C{cam}_F{f:04d}_X{tid}.jpg" for f in range(3)])
    counts = import_duke_video(tmp_path / "duke", tmp_path / "out")
    assert counts["train tracklets"] == 3 and counts["query tracklets"] == 1 and counts["gallery tracklets"] == 2
    train = _rows(tmp_path / "out" / "train.csv")
    assert [r["camera"] for r in train] == ["c1", "c3", "c2"] and [r["label"] for r in train] == [
        "0001",
        "0001",
        "0002",
    ]
    assert _rows(tmp_path / "out" / "gallery.csv")[0]["camera"] == "c6"
    assert not (tmp_path / "out" / "split.json").exists()  # the dataset's own split


def _lsvid(root: Path, hdf5: bool) -> Path:
    base = root / "LS-VID"
    train = [("tracklet_train/0001/0001_0001_03_", "1"), ("tracklet_train/0002/0002_0004_07_", "2")]
    test = [("tracklet_test/0010/0010_0001_01_", "10"), ("tracklet_test/0010/0010_0002_05_", "10"),
            ("tracklet_test/0011/0011_0001_02_", "11")]  # fmt: skip
    for prefix, _ in train + test:
        stem = base / prefix
        _images(stem.parent, [f"{stem.name}{f:04d}.jpg" for f in range(3)])
    (base / "list_sequence").mkdir(parents=True)
    for name, rows in (("list_seq_train.txt", train), ("list_seq_test.txt", test)):
        (base / "list_sequence" / name).write_text("".join(f"{p} {pid}\n" for p, pid in rows))
    (base / "test" / "data").mkdir(parents=True)
    mat = base / "test" / "data" / "info_test.mat"
    if hdf5:  # MATLAB v7.3 files are HDF5, as the published one
        import h5py

        with h5py.File(mat, "w") as fh:
            fh["query"] = np.array([[1.0]])
    else:
        scipy.io.savemat(mat, {"query": np.array([[1.0]])})
    return root


@pytest.mark.parametrize("hdf5", [True, False])
def test_lsvid_queries_from_info_test(tmp_path: Path, hdf5: bool) -> None:
    if hdf5:
        pytest.importorskip("h5py")
    import_lsvid(_lsvid(tmp_path / "ls", hdf5), tmp_path / "out")
    train, query, gallery = (_rows(tmp_path / "out" / f"{s}.csv") for s in ("train", "query", "gallery"))
    assert [(r["label"], r["camera"]) for r in train] == [("1", "c3"), ("2", "c7")]
    assert [(r["label"], r["camera"]) for r in query] == [("10", "c1")]
    assert [(r["label"], r["camera"]) for r in gallery] == [("10", "c5"), ("11", "c2")]
    assert len((tmp_path / "out" / train[0]["path"]).read_text().split()) == 3


def test_bad_layouts_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        import_duke_video(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "d" / "DukeMTMC-VideoReID" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="query"):
        import_duke_video(tmp_path / "d", tmp_path / "o")
    root = _ilids(tmp_path / "ilids", mat=False)
    (root / "i-LIDS-VID" / "sequences" / "cam1" / "person099").mkdir()
    with pytest.raises(UserError, match="person099"):
        import_ilidsvid(root, tmp_path / "o")
    ls = _lsvid(tmp_path / "ls", hdf5=False)
    (ls / "LS-VID" / "list_sequence" / "list_seq_test.txt").write_text("tracklet_test/0099/x_ 99\n")
    with pytest.raises(UserError, match="0099"):
        import_lsvid(ls, tmp_path / "o")


def test_the_command_line(tmp_path: Path) -> None:
    root = _ilids(tmp_path / "ilids")
    res = run_cli("data", "import-ilidsvid", root, tmp_path / "out", "--split", "1")
    assert res.returncode == 0, res.stderr
    assert "query tracklets: 3" in res.stdout and (tmp_path / "out" / "gallery.csv").is_file()
    res = run_cli("data", "import-prid2011", tmp_path / "missing", tmp_path / "o2")
    assert res.returncode == 1 and str(tmp_path / "missing") in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
