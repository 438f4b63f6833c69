"""Static checks of the deployment files (no Docker engine runs here): a real compose implementation validates
compose.yaml, every service runs a valid `vidret` command, and the images end as a non-root user with a health check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
PROFILES = ["demo", "train", "index", "cpu"]


def _compose_bin() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("VIDRET_SKIP_COMPOSE") == "1":
            pytest.skip("VIDRET_SKIP_COMPOSE=1")
        pytest.fail("docker-compose is not installed (Debian package docker-compose; .ci/run installs it)")
    return exe


def _config(*profiles: str) -> dict:
    args = [_compose_bin(), "-f", str(COMPOSE)]
    for p in profiles:
        args += ["--profile", p]
    res = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


def test_compose_validates_with_and_without_profiles() -> None:
    default = _config()["services"]  # compose v2 drops profiled services here; v1 lists them with their profiles
    assert {name for name, svc in default.items() if not svc.get("profiles")} == {"api"}
    services = _config(*PROFILES)["services"]
    assert set(services) == {"api", "synth", "train", "train-cpu", "embed", "embed-cpu", "index"}
    assert services["train"]["profiles"] == ["train"] and "cpu" in services["index"]["profiles"]
    api = services["api"]
    assert api["healthcheck"]["test"] and api["restart"] == "unless-stopped"
    assert any((v["target"] if isinstance(v, dict) else v.split(":")[1]) == "/data" for v in api["volumes"])
    env = api["environment"]
    assert env["VIDRET_API_KEY"] == "" and env["VIDRET_READ_API_KEY"] == ""  # passed through, empty by default
    assert env["VIDRET_ALLOW_UNAUTHENTICATED_WRITES"] == "0" and int(env["VIDRET_MAX_EVAL_QUERIES"]) >= 1
    for name in ("train", "embed"):  # GPU jobs reserve GPUs and enough shared memory for DataLoader workers
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert services[name]["shm_size"]
    for name in ("train-cpu", "embed-cpu"):
        assert "deploy" not in services[name]


def _subcommand(argv: list[str]) -> list[str]:
    sub = []
    for tok in argv[1:]:
        if tok.startswith("-"):
            break
        sub.append(tok)
        if tok not in ("data", "index", "plot", "bench"):
            break
    return sub


def test_every_service_command_is_a_valid_vidret_invocation() -> None:
    for name, svc in _config(*PROFILES)["services"].items():
        argv = svc["command"]
        assert argv[0] == "vidret", name
        sub = _subcommand(argv)
        res = subprocess.run(
            [sys.executable, "-m", "service.cli", *sub, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert res.returncode == 0, (name, res.stderr)
        for flag in (tok for tok in argv[1:] if tok.startswith("--")):
            assert flag in res.stdout, f"service {name}: `vidret {' '.join(sub)}` has no option {flag}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_end_non_root_with_healthcheck(dockerfile: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?.*?/health", text, flags=re.M)
    # dependencies are installed before the source is copied (cache-friendly layers)
    assert text.index("pip install '.[") < text.index("COPY training")
    assert re.search(r"^CMD \[\"vidret\", \"serve\"", text, flags=re.M)


def _serve_settings(argv: list[str], env: dict, monkeypatch: pytest.MonkeyPatch):
    """The Settings `vidret serve` builds from a compose service's command and environment."""
    from service.settings import Settings

    for name in [n for n in os.environ if n.startswith("VIDRET_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    return Settings(host=flags["--host"], index=flags["--index"])


def test_compose_api_refuses_writes_by_default_and_passes_keys_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker compose up api` with no VIDRET_* set: the api listens on 0.0.0.0 and refuses adds and deletes with a
    403 saying how to enable them; with VIDRET_API_KEY/VIDRET_READ_API_KEY exported, compose hands them to the api."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    api = _config()["services"]["api"]
    settings = _serve_settings(api["command"], api["environment"], monkeypatch)
    assert settings.host == "0.0.0.0" and not settings.api_key and not settings.read_api_key
    with TestClient(create_app(settings, load_in_background=False)) as client:
        r = client.delete("/v1/videos/some-id")
        assert r.status_code == 403 and "VIDRET_API_KEY" in r.json()["detail"]
        r = client.post("/v1/videos", files={"file": ("a.mp4", b"\x00\x00\x00\x18ftyp", "video/mp4")}, data={"id": "x"})
        assert r.status_code == 403 and "VIDRET_API_KEY" in r.json()["detail"]

    monkeypatch.setenv("VIDRET_API_KEY", "w-key")
    monkeypatch.setenv("VIDRET_READ_API_KEY", "r-key")
    api = _config()["services"]["api"]
    settings = _serve_settings(api["command"], api["environment"], monkeypatch)
    assert settings.api_key == "w-key" and settings.read_api_key == "r-key"
