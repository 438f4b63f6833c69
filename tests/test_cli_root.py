"""The root command: help lists the commands, multi-value flags, and user errors stay one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import expand_multi_value_flags

VIDRET = [sys.executable, "-m", "service.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VIDRET, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("data", "train", "embed", "index", "evaluate", "serve", "plot", "bench", "audit"):
        assert cmd in res.stdout, cmd


def test_expand_multi_value_flags() -> None:
    argv = ["plot", "weights", "out.png", "--t", "1", "2", "4", "--x"]
    assert expand_multi_value_flags(argv) == ["plot", "weights", "out.png", "--t", "1", "--t", "2", "--t", "4", "--x"]
    assert expand_multi_value_flags(["--noise", "symmetric:0,0.4", "pairflip:0.4", "--seeds", "1"]) == [
        "--noise", "symmetric:0,0.4", "--noise", "pairflip:0.4", "--seeds", "1",
    ]  # fmt: skip
    assert expand_multi_value_flags(["evaluate", "--k", "1", "5", "--json", "o.json"]) == [
        "evaluate",
        "--k",
        "1",
        "--k",
        "5",
        "--json",
        "o.json",
    ]


def test_plot_weights_writes_a_png(tmp_path) -> None:
    out = tmp_path / "w.png"
    res = run("plot", "weights", str(out), "--t", "1", "4", "16")
    assert res.returncode == 0, res.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize(
    "args,needle",
    [
        (("plot", "weights", "w.txt"), "must end in .png"),
        (("plot", "weights", "w.png", "--t", "-1"), "--t values must be >= 0"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, needle) -> None:
    res = subprocess.run([*VIDRET, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 1
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
