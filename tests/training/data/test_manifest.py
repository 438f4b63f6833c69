"""Manifests: CSV and JSONL, relative paths, ids, and every kind of bad manifest named by file and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexing.errors import UserError
from training.data.manifest import class_map, read_manifest, scan_folder, write_manifest


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_and_jsonl_with_defaults(tmp_path: Path) -> None:
    rows = read_manifest(_write(tmp_path / "m.csv", "path,label,camera\nv/a.mp4,p1,c1\n/abs/b.avi,p2,\n"))
    assert rows[0].path == str(tmp_path / "v" / "a.mp4") and rows[0].id == "v:a.mp4" and rows[0].camera == "c1"
    assert rows[1].path == "/abs/b.avi" and rows[1].row == 2 and rows[1].clean_label is None
    rows = read_manifest(
        _write(
            tmp_path / "m.jsonl",
            '{"path": "x.mkv", "id": "x", "label": 3, "clean_label": 4}\n\n{"path": "frames_dir"}\n',
        )
    )
    assert rows[0].label == "3" and rows[0].clean_label == "4" and rows[1].label is None


def test_round_trip_and_class_map(tmp_path: Path) -> None:
    rows = read_manifest(_write(tmp_path / "m.csv", "path,id,label,clean_label\na.mp4,A,z,y\nb.mp4,B,a,a\n"))
    out = write_manifest(tmp_path / "sub" / "out.csv", rows)
    again = read_manifest(out)
    assert [r.path for r in again] == [r.path for r in rows]
    assert [(r.id, r.label, r.clean_label) for r in again] == [("A", "z", "y"), ("B", "a", "a")]
    assert class_map(["z", "a", None, "z"]) == {"a": 0, "z": 1}


@pytest.mark.parametrize(
    "text,needle",
    [
        ("label\np1\n", "missing required column 'path'"),
        ("path,id\na.mp4,x\nb.mp4,x\n", "row 2: duplicate id 'x' (first at row 1)"),
        ("path,label\n", "has no rows"),
        ("", "has no rows"),
        ("path,label\na.txt,p\n", "row 1: a.txt: unknown extension '.txt'"),
        ("path,label\n,p\n", "row 1: missing required field 'path'"),
    ],
)
def test_bad_manifests_name_file_and_row(tmp_path: Path, text: str, needle: str) -> None:
    m = _write(tmp_path / "bad.csv", text)
    with pytest.raises(UserError) as info:
        read_manifest(m)
    assert needle in str(info.value) and str(m) in str(info.value)


def test_label_required_for_training(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="row 1: missing required field 'label'"):
        read_manifest(_write(tmp_path / "m.csv", "path\na.mp4\n"), require_label=True)
    with pytest.raises(UserError, match="row 1: not valid JSON"):
        read_manifest(_write(tmp_path / "m.jsonl", "{oops\n"))
    with pytest.raises(UserError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_folder_per_label_scan(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "1.mp4").write_bytes(b"x")
    (tmp_path / "bob" / "clip7").mkdir(parents=True)
    (tmp_path / "bob" / "clip7" / "0001.jpg").write_bytes(b"x")
    (tmp_path / "bob" / "notes.txt").write_text("ignored")
    rows = scan_folder(tmp_path)
    assert [(r.id, r.label) for r in rows] == [("alice:1.mp4", "alice"), ("bob:clip7", "bob")]
