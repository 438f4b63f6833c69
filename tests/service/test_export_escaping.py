"""Spreadsheet formulas in the cleaned manifest (OWASP CSV injection): a cell that starts with = + - @, a tab or a
CR gets a ' in front, in the HTTP export and in `vidret review export` alike, and the manifest reader reads the
original value back."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import run_cli
from training.data.manifest import FORMULA_STARTS, escape_cell, read_manifest, unescape_cell

KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize(
    "value",
    ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "''@x", "'abc", "'", "", "plain", "a=b", "''", "-"],
)
def test_escape_round_trip(value: str) -> None:
    out = escape_cell(value)
    assert unescape_cell(out) == value
    assert not out.startswith(FORMULA_STARTS)  # a spreadsheet shows every written cell as text
    if value.startswith(FORMULA_STARTS):
        assert out == "'" + value
    if not value.lstrip("'").startswith(FORMULA_STARTS):
        assert out == value and unescape_cell(value) == value  # hand-written quotes stay as they are


def test_http_and_cli_exports_are_escaped_and_read_back(fresh_index: Path, checkpoint: Path, synth_dir: Path) -> None:
    video = (synth_dir / "videos" / "id0001" / "c2_s1.mp4").read_bytes()
    settings = Settings(index=fresh_index, checkpoint=checkpoint, device="cpu", api_key=KEY)
    added = {"=HYPERLINK(1)": ("@SUM(A1)", "-2"), "+cmd": ("=1+1", "+c"), "-x": ("plain", "'=quoted")}
    with TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False) as c:
        for vid, (label, camera) in added.items():
            r = c.post(
                "/v1/videos",
                files={"file": ("x.mp4", video, "video/mp4")},
                data={"id": vid, "label": label, "camera": camera},
                headers=AUTH,
            )
            assert r.status_code == 201, r.text
        r = c.put("/v1/review/decisions/-x", json={"action": "relabel", "label": "@relabelled"}, headers=AUTH)
        assert r.status_code == 200, r.text
        http = c.get("/v1/review/export", headers=AUTH)
    assert http.status_code == 200
    rows = {row["id"]: row for row in csv.DictReader(io.StringIO(http.text))}
    assert rows["'=HYPERLINK(1)"]["label"] == "'@SUM(A1)" and rows["'=HYPERLINK(1)"]["camera"] == "'-2"
    assert rows["'+cmd"]["label"] == "'=1+1" and rows["'+cmd"]["camera"] == "'+c"
    assert rows["'-x"]["label"] == "'@relabelled" and rows["'-x"]["camera"] == "''=quoted"
    for row in rows.values():  # no cell of the export starts a formula
        assert not any(v.startswith(FORMULA_STARTS) for v in row.values()), row

    out = fresh_index.parent / "cleaned.csv"
    res = run_cli("review", "export", "--index", fresh_index, "--out", out)
    assert res.returncode == 0, res.stderr
    cli = {row["id"]: row for row in csv.DictReader(open(out, newline=""))}
    assert {k: (v["label"], v["camera"]) for k, v in cli.items()} == {
        k: (v["label"], v["camera"]) for k, v in rows.items()
    }
    back = {r.id: r for r in read_manifest(out)}  # the reader takes the quotes off again
    assert (back["=HYPERLINK(1)"].label, back["=HYPERLINK(1)"].camera) == ("@SUM(A1)", "-2")
    assert (back["+cmd"].label, back["+cmd"].camera) == ("=1+1", "+c")
    assert (back["-x"].label, back["-x"].camera) == ("@relabelled", "'=quoted")
    assert Path(back["+cmd"].path).is_file()
