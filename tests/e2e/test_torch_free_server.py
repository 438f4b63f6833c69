"""`vidret serve --checkpoint model.onnx` as a real process in which torch, torchvision and decord cannot be imported
(as in the API image, docker/Dockerfile.api): every route a user calls works, the server-side audit refuses with a
409 that says why, and the commands that need torch stop with one line that says so."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.e2e.test_serve_process import Server

pytest.importorskip("onnxruntime")

BLOCKED = ("torch", "torchvision", "decord")
AUTH = {"Authorization": "Bearer k"}


def _without_torch(tmp_path: Path) -> list[str]:
    """A `vidret` that cannot import torch, torchvision or decord (None in sys.modules: `import` raises)."""
    script = tmp_path / "vidret_without_torch.py"
    script.write_text(
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({BLOCKED!r}))\n"
        "from service.cli import main\n"
        "sys.argv[0] = 'vidret'\n"
        "main()\n"
    )
    return [sys.executable, str(script)]


@pytest.fixture()
def onnx_model(checkpoint: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model.onnx"
    res = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--out", out)
    assert res.returncode == 0, res.stderr
    return out


def test_every_route_works_without_torch(index: Path, onnx_model: Path, synth_dir: Path, tmp_path: Path) -> None:
    video = synth_dir / "videos" / "id0007" / "c1_s0.mp4"
    server = Server(index, onnx_model, command=_without_torch(tmp_path)).start()
    try:
        url = server.url
        info = httpx.get(f"{url}/v1/index").json()
        assert info["model"]["runtime"] == "onnx" and info["model"]["checkpoint"] == "model.onnx"
        first = httpx.get(f"{url}/v1/videos", params={"limit": 1}).json()["videos"][0]["id"]
        hits = httpx.post(f"{url}/v1/search", json={"id": first, "k": 5}).json()["results"]
        assert len(hits) == 5
        thumb = httpx.get(f"{url}/v1/videos/{first}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size[0] > 0
        with open(video, "rb") as fh:
            r = httpx.post(f"{url}/v1/search/video", files={"file": ("q.mp4", fh, "video/mp4")}, data={"k": "3"})
        assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
        r = httpx.post(f"{url}/v1/videos", files={"file": ("a.mp4", video.read_bytes())}, data={"id": "added"},
                       headers=AUTH)  # fmt: skip
        assert r.status_code == 201, r.text
        assert httpx.get(f"{url}/v1/videos/added/thumbnail").status_code == 200
        assert httpx.delete(f"{url}/v1/videos/added", headers=AUTH).status_code == 204
        for body in ({"all": True}, {"all": True, "rerank": True, "k1": 5, "k2": 3}):
            r = httpx.post(f"{url}/v1/evaluate", json=body, timeout=60)
            assert r.status_code == 200 and 0 < r.json()["mAP"] <= 1, r.text
        r = httpx.post(f"{url}/v1/review/audit/compute", headers=AUTH)
        assert r.status_code == 409 and "ONNX" in r.json()["detail"]
        assert httpx.get(f"{url}/").status_code == 200  # the web page
    finally:
        server.stop()
    err = server.proc.stderr.read().decode()
    assert "Traceback" not in err, err[-3000:]


def test_commands_that_need_torch_say_so_in_one_line(tmp_path: Path) -> None:
    for argv in (["train", "--train", "x.csv", "--out", str(tmp_path / "r")], ["export", "--checkpoint", "x.pt",
                 "--out", str(tmp_path / "m.onnx")]):  # fmt: skip
        res = subprocess.run([*_without_torch(tmp_path), *argv], capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, (argv, res.stderr)
        assert res.stderr.startswith("error: this command needs torch") and "Traceback" not in res.stderr
