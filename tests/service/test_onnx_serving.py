"""The whole upload path through both runtimes: a server with the .pt checkpoint and one with its ONNX export
return the same hit list for the same uploaded videos (POST /v1/search/video), and the ONNX server adds videos
whose vectors match the torch server's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import run_cli

pytest.importorskip("onnxruntime")


def _client(index: Path, checkpoint: Path, **kw) -> TestClient:
    settings = Settings(index=index, checkpoint=checkpoint, device="cpu", **kw)
    return TestClient(create_app(settings, load_in_background=False), raise_server_exceptions=False)


def test_same_hit_list_through_torch_and_onnxruntime(
    index_dir: Path, checkpoint: Path, synth_dir: Path, tmp_path: Path
) -> None:
    onnx = tmp_path / "model.onnx"
    res = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--out", onnx)
    assert res.returncode == 0, res.stderr
    videos = sorted((synth_dir / "videos").rglob("*.mp4"))[::5][:4]
    lists = {}
    for name, ck in (("torch", checkpoint), ("onnx", onnx)):
        with _client(index_dir, ck) as c:
            info = c.get("/v1/index").json()["model"]
            assert info["checkpoint"] == ck.name and info["runtime"] == name
            got = []
            for v in videos:
                with open(v, "rb") as fh:
                    r = c.post("/v1/search/video", files={"file": ("clip.mp4", fh, "video/mp4")}, data={"k": "10"})
                assert r.status_code == 200, r.text
                got.append(r.json()["results"])
            r = c.post("/v1/search/video", files={"file": ("t.mp4", b"hello, I am text", "video/mp4")})
            assert r.status_code == 415
            lists[name] = (got, info["sha256"])
    (t_hits, t_sha), (o_hits, o_sha) = lists["torch"], lists["onnx"]
    assert t_sha == o_sha  # the ONNX model names the checkpoint it came from
    for a, b in zip(t_hits, o_hits, strict=True):
        assert [h["id"] for h in a] == [h["id"] for h in b]
        assert np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-4)


def test_onnx_server_refuses_the_server_side_audit(index_dir: Path, checkpoint: Path, tmp_path: Path) -> None:
    from training.export import export_onnx

    export_onnx(checkpoint, tmp_path / "m.onnx")
    with _client(index_dir, tmp_path / "m.onnx", api_key="k" * 24) as c:
        assert c.get("/ready").status_code == 200
        r = c.post("/v1/review/audit/compute", headers={"Authorization": "Bearer " + "k" * 24})
        assert r.status_code == 409 and "ONNX" in r.json()["detail"]


def test_the_onnx_upload_path_imports_no_torch(
    index_dir: Path, checkpoint: Path, synth_dir: Path, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    from training.export import export_onnx

    export_onnx(checkpoint, tmp_path / "m.onnx")
    video = sorted((synth_dir / "videos").rglob("*.mp4"))[0]
    script = f"""
import json, sys
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
app = create_app(Settings(index={str(index_dir)!r}, checkpoint={str(tmp_path / "m.onnx")!r}, device="cpu"),
                 load_in_background=False)
with TestClient(app) as c, open({str(video)!r}, "rb") as fh:
    r = c.post("/v1/search/video", files={{"file": ("a.mp4", fh, "video/mp4")}})
print(json.dumps({{"status": r.status_code, "hits": len(r.json()["results"]), "torch": "torch" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"status": 200, "hits": 10, "torch": False}
