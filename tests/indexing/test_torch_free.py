"""indexing/ works without torch (the torch-free API image, issue 30): the exact evaluation and re-ranking run in a
fresh process where ``import torch`` fails, and give the same figures as here; no module of indexing/ imports torch,
at its top or inside a function."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexing.metrics import evaluate_retrieval
from indexing.rerank import RerankParams, rerank_evaluate, rerank_evaluate_within

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
import numpy as np
from indexing.metrics import evaluate_retrieval
from indexing.rerank import RerankParams, rerank_evaluate, rerank_evaluate_within

args = json.loads(sys.stdin.read())
q, g = np.asarray(args["q"], dtype=np.float32), np.asarray(args["g"], dtype=np.float32)
meta = args["meta"]
out = {}
for metric in ("cosine", "l2"):
    plain = evaluate_retrieval(q, *meta[:3], g, *meta[3:], metric=metric, block_size=7)
    rr, _ = rerank_evaluate(q, *meta[:3], g, *meta[3:], metric=metric, params=RerankParams(8, 3, 0.3))
    within, _ = rerank_evaluate_within(g, *meta[3:], list(range(10)), metric=metric, params=RerankParams(8, 3, 0.3))
    out[metric] = [plain.to_json(), rr.to_json(), within.to_json()]
out["torch_loaded"] = sys.modules.get("torch") is not None
print(json.dumps(out))
"""


def _problem(seed: int = 3) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 12))
    ql, gl = rng.integers(0, 8, 25), rng.integers(0, 8, 90)
    q = (centres[ql] + 0.8 * rng.normal(size=(25, 12))).astype(np.float32)
    g = (centres[gl] + 0.8 * rng.normal(size=(90, 12))).astype(np.float32)
    meta = [
        [f"q{i}" for i in range(25)],
        [f"p{v}" for v in ql],
        [f"c{v}" for v in rng.integers(0, 3, 25)],
        [f"g{i}" for i in range(90)],
        [f"p{v}" for v in gl],
        [f"c{v}" for v in rng.integers(0, 3, 90)],
    ]
    return q, g, meta


def test_evaluation_and_rerank_run_where_torch_cannot_be_imported() -> None:
    q, g, meta = _problem()
    payload = json.dumps({"q": q.tolist(), "g": g.tolist(), "meta": meta})
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], input=payload, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got.pop("torch_loaded") is False
    for metric in ("cosine", "l2"):
        plain = evaluate_retrieval(q, *meta[:3], g, *meta[3:], metric=metric)
        rr, _ = rerank_evaluate(q, *meta[:3], g, *meta[3:], metric=metric, params=RerankParams(8, 3, 0.3))
        within, _ = rerank_evaluate_within(g, *meta[3:], range(10), metric=metric, params=RerankParams(8, 3, 0.3))
        want = [plain.to_json(), rr.to_json(), within.to_json()]
        for a, b in zip(got[metric], want, strict=True):
            assert a["num_queries"] == b["num_queries"] > 0 and a["skipped"] == b["skipped"]
            assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-12) and a["cmc"] == pytest.approx(b["cmc"], abs=1e-12)
        assert 0 < got[metric][0]["mAP"] < got[metric][1]["mAP"] <= 1  # re-ranking helps on clustered data


def test_no_module_of_indexing_imports_torch() -> None:
    found = []
    for path in sorted((ROOT / "indexing").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "torch"]
    assert found == []
