"""Static checks of compose.yaml's `milvus` profile (Milvus standalone with its etcd and MinIO, the index-milvus
job and the api-milvus service): its images cannot be pulled here, so it is validated by docker-compose and its
vidret commands are checked against the real CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.test_docker import ROOT, _config, _subcommand

MILVUS_SERVICES = {"milvus-etcd", "milvus-minio", "milvus", "index-milvus", "api-milvus"}


def _help(sub: list[str]) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "service.cli", *sub, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_milvus_profile_validates_and_wires_milvus_standalone() -> None:
    services = _config("milvus")["services"]
    assert MILVUS_SERVICES <= set(services)
    for name in MILVUS_SERVICES:
        assert services[name]["profiles"] == ["milvus"], name
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"] and milvus["image"].startswith("milvusdb/milvus:v2.")
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "milvus-etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "milvus-minio:9000"
    assert set(milvus["depends_on"]) == {"milvus-etcd", "milvus-minio"}
    assert "9091/healthz" in " ".join(milvus["healthcheck"]["test"])


def test_milvus_jobs_are_valid_vidret_invocations_against_the_milvus_service() -> None:
    services = _config("milvus")["services"]
    for name, sub in (("index-milvus", ["index", "build"]), ("api-milvus", ["serve"])):
        argv = services[name]["command"]
        assert argv[0] == "vidret" and _subcommand(argv) == sub, name
        flags = dict(zip(argv[len(sub) + 1 :: 2], argv[len(sub) + 2 :: 2], strict=False))
        assert flags["--backend"] == "milvus" and flags["--milvus-uri"] == "http://milvus:19530", name
        assert flags["--milvus-collection"] == "vidret"
        text = _help(sub)
        for flag in (tok for tok in argv[1:] if tok.startswith("--")):
            assert flag in text, f"service {name}: `vidret {' '.join(sub)}` has no option {flag}"
        assert "milvus" in services[name]["depends_on"]
    api = services["api-milvus"]
    assert api["healthcheck"]["test"] == ["CMD", "vidret", "health", "--url", "http://127.0.0.1:8000/health"]
    assert api["environment"]["VIDRET_API_KEY"] == "" and api["environment"]["VIDRET_MILVUS_TOKEN"] == ""
    port = api["ports"][0]  # docker-compose 1 gives {published, target}; 2 may give "8001:8000"
    assert (
        (int(port["published"]), int(port["target"])) == (8001, 8000) if isinstance(port, dict) else port == "8001:8000"
    )


def test_milvus_image_installs_the_milvus_extra_and_ends_non_root() -> None:
    text = (ROOT / "docker" / "Dockerfile.milvus").read_text()
    extra = json.loads(re.search(r"^milvus = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), flags=re.M)[1])
    assert re.findall(r"pip install '([^']+)'", text) == extra
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users[-1] == "vidret"
