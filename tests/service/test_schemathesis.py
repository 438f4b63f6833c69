"""Property-based fuzzing of the app's own OpenAPI schema: no 5xx, and responses match the schema."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import Settings
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def app(embeddings: dict[str, Path], checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    out = tmp_path_factory.mktemp("fuzz") / "index"
    assert run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", out).returncode == 0
    application = create_app(Settings(index=out, checkpoint=checkpoint, device="cpu", api_key="k"),
                             load_in_background=False)
    from fastapi.testclient import TestClient

    with TestClient(application):  # runs the lifespan: loads the index
        yield application
    shutil.rmtree(out, ignore_errors=True)


schemathesis.experimental.OPEN_API_3_1.enable()  # FastAPI publishes OpenAPI 3.1
schema = schemathesis.from_pytest_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(app):  # noqa: ANN001, ANN201
    return schemathesis.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_no_server_errors_and_schema_conformance(case) -> None:  # noqa: ANN001
    response = case.call_asgi(headers={"Authorization": "Bearer k"})
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    case.validate_response(response, checks=(schemathesis.checks.not_a_server_error,
                                              schemathesis.checks.status_code_conformance,
                                              schemathesis.checks.content_type_conformance,
                                              schemathesis.checks.response_schema_conformance))
