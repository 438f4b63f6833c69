"""``vidret serve``'s flags are generated from ``Settings`` (service/settings.py): every field is a flag with the
field's description, its ``VIDRET_*`` variable and its default; a flag that is given wins over the environment,
one that is not leaves the field to it; a field added to ``Settings`` is a flag with no other edit."""

from __future__ import annotations

import click
import pytest
import typer
from pydantic import Field
from typer.testing import CliRunner

import service.cli as cli
import service.settings
from service.settings import Settings


def _serve_command() -> click.Command:
    return typer.main.get_command(cli.app).commands["serve"]


def _flag_fields() -> list[str]:
    return [n for n, f in Settings.model_fields.items() if (f.json_schema_extra or {}).get("cli", True) is not False]


def test_every_setting_is_a_flag_with_its_description_env_and_default() -> None:
    options = {p.name: p for p in _serve_command().params}
    assert set(options) == {*_flag_fields(), "log_level"}
    for name in _flag_fields():
        info = Settings.model_fields[name]
        opt = options[name]
        assert opt.opts == [f"--{name.replace('_', '-')}"], name
        assert info.description and opt.help.startswith(info.description), name
        assert f"env VIDRET_{name.upper()}" in opt.help, name
        if info.default not in (None, False):
            assert f"default {info.default})" in opt.help, name
        assert opt.default is None, name  # not given: the environment, then the field's default
        assert opt.is_flag == (info.annotation is bool), name
    assert "milvus_token" not in options  # a secret: environment only


def test_every_setting_has_a_description() -> None:
    assert [n for n, f in Settings.model_fields.items() if not f.description] == []


@pytest.fixture()
def started(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The Settings `vidret serve` would start with (nothing is served)."""
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "_check_served", seen.append)
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    return seen


def test_flags_win_over_the_environment_and_unset_flags_leave_it(
    started: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIDRET_MAX_K", "7")
    monkeypatch.setenv("VIDRET_PORT", "9001")
    args = ["serve", "--port", "9100", "--mmap", "--backend", "milvus", "--index", "ix", "--search-threads", "3"]
    res = CliRunner().invoke(cli.app, args)
    assert res.exit_code == 0, res.output
    s = started[0]
    assert (s.port, s.max_k, s.mmap, s.backend, str(s.index), s.search_threads) == (9100, 7, True, "milvus", "ix", 3)
    assert s.allow_unauthenticated_writes is False and s.max_batch == Settings.model_fields["max_batch"].default


def test_a_bad_value_names_the_setting(started: list[Settings]) -> None:
    res = CliRunner().invoke(cli.app, ["serve", "--max-k", "0"])
    assert res.exit_code != 0 and "setting max_k" in str(res.exception) and started == []


def test_a_new_setting_becomes_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    class More(Settings):
        queue_depth: int = Field(12, ge=1, description="Requests waiting at most.")

    monkeypatch.setattr(service.settings, "Settings", More)
    params = {p.name: p for p in cli.serve_options()}
    assert "queue_depth" in params
    option = params["queue_depth"].default
    assert option.help == "Requests waiting at most. (env VIDRET_QUEUE_DEPTH, default 12)"
