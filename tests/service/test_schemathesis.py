"""Property-based fuzzing: of the app's own OpenAPI schema (no 5xx, responses match the schema), and of request
headers, sent as raw bytes (no 5xx; every Authorization value that is not a key gets a 401 or a 403)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.settings import Settings
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def fuzz_index(embeddings: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fuzz") / "index"
    assert run_cli("index", "build", "--embeddings", embeddings["gallery"], "--out", out).returncode == 0
    yield out
    shutil.rmtree(out, ignore_errors=True)


def _started(settings: Settings):
    from fastapi.testclient import TestClient

    application = create_app(settings, load_in_background=False)
    return application, TestClient(application)  # entering the client runs the lifespan: loads the index


@pytest.fixture(scope="module")
def app(fuzz_index: Path, checkpoint: Path):
    application, client = _started(Settings(index=fuzz_index, checkpoint=checkpoint, device="cpu", api_key="k"))
    with client:
        yield application


schemathesis.experimental.OPEN_API_3_1.enable()  # FastAPI publishes OpenAPI 3.1
schema = schemathesis.from_pytest_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_server_errors_and_schema_conformance(case) -> None:
    response = case.call_asgi(headers={"Authorization": "Bearer k"})
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
    case.validate_response(
        response,
        checks=(
            schemathesis.checks.not_a_server_error,
            schemathesis.checks.status_code_conformance,
            schemathesis.checks.content_type_conformance,
            schemathesis.checks.response_schema_conformance,
        ),
    )


# ---- headers, as raw bytes straight into the ASGI app (an HTTP client would re-encode them) ----

WRITE, READ = "w-key", "r-key"
MULTIPART = b'--b\r\nContent-Disposition: form-data; name="id"\r\n\r\nx\r\n--b--\r\n'
ROUTES = [  # (method, path, body, content type): reads and writes
    ("GET", "/v1/videos", b"", b""),
    ("GET", "/v1/index", b"", b""),
    ("GET", "/v1/videos/id0008_c2_s1/thumbnail", b"", b""),
    ("POST", "/v1/search", json.dumps({"id": "id0008_c2_s1", "k": 2}).encode(), b"application/json"),
    ("POST", "/v1/evaluate", json.dumps({"query_ids": ["id0008_c2_s1"]}).encode(), b"application/json"),
    ("POST", "/v1/videos", MULTIPART, b"multipart/form-data; boundary=b"),
    ("DELETE", "/v1/videos/id0008_c2_s1", b"", b""),
]


@pytest.fixture(scope="module")
def locked_app(fuzz_index: Path):
    application, client = _started(Settings(index=fuzz_index, host="0.0.0.0", api_key=WRITE, read_api_key=READ))
    with client:
        yield application


def call(
    app, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"", query: bytes = b""
) -> tuple[int, bytes]:
    """One request through the ASGI interface, headers exactly as given."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: dict = {"status": None, "body": b""}

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return sent["status"], sent["body"]


AUTHORIZATION = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=80).map(lambda b: b"Bearer " + b),
    st.text(max_size=40).map(lambda t: f"Bearer {t}".encode()),
    st.sampled_from(
        [
            b"",
            b"Bearer",
            b"Bearer ",
            b"Basic xyz",
            b"bearer \xe9",
            b"Bearer " + b"\xff" * 20_000,
            f"Bearer  {WRITE}x".encode(),
            f"Bearer {READ}\x00".encode(),
            READ.encode(),
        ]
    ),
)


@given(route=st.sampled_from(ROUTES), value=AUTHORIZATION)
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_authorization_bytes_get_401_or_403(locked_app, route, value: bytes) -> None:
    assume(value.strip() not in (f"Bearer {WRITE}".encode(), f"Bearer {READ}".encode()))
    method, path, body, ctype = route
    headers = [(b"authorization", value), *([(b"content-type", ctype)] if ctype else [])]
    status, text = call(locked_app, method, path, headers, body)
    assert status in (401, 403), f"{method} {path} Authorization {value[:60]!r}: {status} {text[:200]!r}"
    assert json.loads(text)["detail"]


OTHER_HEADERS = [
    b"content-length",
    b"content-type",
    b"accept",
    b"accept-encoding",
    b"host",
    b"cookie",
    b"range",
    b"transfer-encoding",
    b"x-forwarded-for",
    b"origin",
    b"if-none-match",
]


@given(
    route=st.sampled_from(ROUTES),
    name=st.sampled_from(OTHER_HEADERS),
    value=st.one_of(
        st.binary(max_size=60),
        st.sampled_from([b"\xb2", b"\xb9\xb3", b"-1", b"99999999999999999999", b"\xff" * 10_000]),
    ),
)
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_other_header_bytes_get_no_server_error(locked_app, route, name: bytes, value: bytes) -> None:
    method, path, body, ctype = route
    headers = [(b"authorization", f"Bearer {WRITE}".encode()), (name, value)]
    if ctype and name != b"content-type":
        headers.append((b"content-type", ctype))
    status, text = call(locked_app, method, path, headers, body)
    assert status < 500, f"{method} {path} {name.decode()}: {value[:60]!r}: {status} {text[:200]!r}"


# ---- every integer in the published schema, at any size (the schema bounds them: 422, never a 5xx) ----

BASE_BODIES = {  # a valid body of each JSON route, into which the integers go
    "/v1/search": {"id": "id0008_c2_s1"},
    "/v1/search/batch": {"queries": [{"id": "id0008_c2_s1"}]},
    "/v1/evaluate": {"all": True},
    "/v1/evaluate/queries": {"all": True},
}


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _is_int(schema: dict) -> bool:
    return schema.get("type") == "integer" or any(s.get("type") == "integer" for s in schema.get("anyOf", []))


def integer_fields(doc: dict) -> list[tuple[str, str, str, str, bool]]:
    """(method, path, 'query' or 'body', name, whether a list of integers) of every integer the API takes."""
    found = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                if p["in"] == "query" and _is_int(p.get("schema", {})):
                    found.append((method.upper(), path, "query", p["name"], False))
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            for name, prop in _resolve(doc, body["schema"]).get("properties", {}).items():
                if _is_int(prop):
                    found.append((method.upper(), path, "body", name, False))
                elif prop.get("type") == "array" and _is_int(_resolve(doc, prop.get("items", {}))):
                    found.append((method.upper(), path, "body", name, True))
    return found


BIG_INTS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, 10**300, -(2**63) - 1]),
)


def test_the_integer_fields_are_found(app) -> None:
    fields = {(m, p, n) for m, p, _, n, _ in integer_fields(app.openapi())}
    assert {("GET", "/v1/videos", "offset"), ("POST", "/v1/evaluate", "ks"), ("POST", "/v1/search", "k")} <= fields


@given(data=st.data())
@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_integer_anywhere_gets_no_server_error(app, data) -> None:
    from urllib.parse import urlencode

    method, path, where, name, is_list = data.draw(st.sampled_from(integer_fields(app.openapi())))
    value = data.draw(st.lists(BIG_INTS, min_size=1, max_size=40) if is_list else BIG_INTS)
    concrete = path.replace("{video_id}", "id0008_c2_s1").replace("{video_id:path}", "id0008_c2_s1")
    headers = [(b"authorization", b"Bearer k")]
    if where == "query":
        status, text = call(app, method, concrete, headers, query=urlencode({name: value}).encode())
    else:
        body = json.dumps({**BASE_BODIES.get(path, {}), name: value}).encode()
        status, text = call(app, method, concrete, [*headers, (b"content-type", b"application/json")], body)
    assert status < 500, f"{method} {path} {name}={str(value)[:80]}: {status} {text[:200]!r}"
