"""Static checks of the deployment files: a real compose implementation validates compose.yaml, every service runs a
valid `vidret` command, the images end as a non-root user with a health check that survives any engine, and
docker/.env.example documents every VIDRET_* setting compose reads. `make deploy-check` (docker/deploy_check.sh)
builds the CPU image and runs the compose flow for real; it needs root and podman, so it is not part of the tests."""

from __future__ import annotations

import json
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
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
HEALTH_ARGV = ["vidret", "health", "--url", "http://127.0.0.1:8000/health"]
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


def _without_milvus(services: dict) -> dict:
    """The services outside profile milvus (docker-compose 1 lists every profile's; tests/test_compose_milvus.py
    checks that profile)."""
    return {name: svc for name, svc in services.items() if "milvus" not in svc.get("profiles", [])}


def test_compose_validates_with_and_without_profiles() -> None:
    default = _config()["services"]  # compose v2 drops profiled services here; v1 lists them with their profiles
    assert {name for name, svc in default.items() if not svc.get("profiles")} == {"api"}
    services = _without_milvus(_config(*PROFILES)["services"])
    assert set(services) == {"api", "synth", "train", "train-cpu", "embed", "embed-cpu", "index", "export"}
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
    # the api is the torch-free image serving the ONNX model that the export job writes
    assert api["image"] == "vidret:api" and api["build"]["dockerfile"].endswith("Dockerfile.api")
    model = api["command"][api["command"].index("--checkpoint") + 1]
    assert model.endswith(".onnx") and services["export"]["command"][-1] == model
    assert services["export"]["image"] == "vidret:cpu" and "cpu" in services["export"]["profiles"]


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
    for name, svc in _without_milvus(_config(*PROFILES)["services"]).items():
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


@pytest.mark.parametrize(
    ("dockerfile", "extras"), [("Dockerfile", "gpu onnx"), ("Dockerfile.cpu", "cpu onnx"), ("Dockerfile.api", "api")]
)
def test_dockerfiles_end_non_root_with_healthcheck(dockerfile: str, extras: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?.*?/health", text, flags=re.M)
    # dependencies are installed before the source is copied, from the requirements alone (cache-friendly layers)
    assert f"python requirements.py {extras} >/requirements.txt" in text
    source = "COPY training" if dockerfile == "Dockerfile" else "COPY --from=wheel"  # CPU and API: vidret as a wheel
    assert text.index("pip install -r /tmp/requirements.txt") < text.index(source)
    assert re.search(r"^CMD \[\"vidret\", \"serve\"", text, flags=re.M)
    # exec form, no spaces inside an argument (podman's Docker API re-splits a command at spaces)
    health = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", text, flags=re.M)
    assert health and json.loads(health.group(1)) == HEALTH_ARGV


@pytest.mark.parametrize("extras", [["cpu", "onnx"], ["gpu", "onnx"], ["api"]])
def test_image_requirements_are_the_projects(extras: list[str]) -> None:
    """docker/requirements.py gives the image's dependency layer exactly what `pip install .[extras]` would install:
    vidret's dependencies, then each extra's, an extra naming another of vidret's (vidret[train]) expanded."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    res = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "requirements.py"), *extras, str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    opt = project["optional-dependencies"]
    want = list(project["dependencies"])
    for extra in extras:
        for req in opt[extra]:
            for r in opt["train"] if req == "vidret[train]" else [req]:
                want += [] if r in want else [r]
    assert res.stdout.splitlines() == want
    torch_free = {r.split(">")[0].split("=")[0].split("[")[0] for r in res.stdout.splitlines()}
    assert ("torch" in torch_free) == (extras != ["api"])  # the API image's requirements hold no torch
    res = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "requirements.py"), "nope", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "EXTRA is one of" in res.stderr and "cpu" in res.stderr


def test_health_checks_hold_no_spaces_and_call_a_real_command() -> None:
    test = _config()["services"]["api"]["healthcheck"]["test"]
    assert test == ["CMD", *HEALTH_ARGV]
    assert not any(re.search(r"\s", arg) for arg in test)
    res = subprocess.run(
        [sys.executable, "-m", "service.cli", "health", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "--url" in res.stdout, res.stderr


def _compose_defaults() -> dict[str, str]:
    """Every ${VIDRET_*} compose.yaml interpolates (${VIDRET_X:-default}, ${VIDRET_X-default}, ${VIDRET_X}), with
    its default ("" when it has none)."""
    found = re.findall(r"\$\{(VIDRET_[A-Z0-9_]+)(?::?-([^}]*))?\}", COMPOSE.read_text())
    defaults: dict[str, str] = {}
    for name, default in found:
        assert defaults.setdefault(name, default) == default, f"{name} has two defaults in compose.yaml"
    return defaults


def test_env_example_lists_every_compose_setting_with_its_default() -> None:
    example: dict[str, str] = {}
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and name.startswith("VIDRET_"), f"docker/.env.example line {i + 1}: {line!r}"
            example[name] = value
    defaults = _compose_defaults()
    missing = sorted(set(defaults) - set(example))
    assert not missing, f"compose.yaml reads {missing}: add them to docker/.env.example with a comment"
    unknown = sorted(set(example) - set(defaults))
    assert not unknown, f"docker/.env.example sets {unknown}, which compose.yaml never reads"
    for name, default in defaults.items():
        assert example[name] == default, f"{name}: .env.example says {example[name]!r}, compose.yaml {default!r}"
    assert len([x for x in lines if x.startswith("#")]) >= len(defaults) // 2  # explained, not just listed


def test_cpu_profile_defaults_are_small_enough_for_a_cpu() -> None:
    """The GPU defaults (r2plus1d_18, 30 epochs, 8 workers) would take days on a CPU: the cpu jobs have their own."""
    services = _config("cpu")["services"]
    train = services["train-cpu"]["command"]
    flags = dict(zip(train[2::2], train[3::2], strict=False))
    assert flags["--model"] == "tiny3d" and int(flags["--epochs"]) <= 5 and int(flags["--workers"]) <= 2
    assert flags["--device"] == "cpu" and int(flags["--size"]) <= 64 and int(flags["--frames"]) <= 8
    embed = services["embed-cpu"]["command"]
    assert embed[embed.index("--device") + 1] == "cpu" and int(embed[embed.index("--workers") + 1]) <= 2
    train_gpu = _config("train")["services"]["train"]["command"]
    assert train_gpu[train_gpu.index("--model") + 1] == "r2plus1d_18"  # the GPU job keeps its defaults


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
