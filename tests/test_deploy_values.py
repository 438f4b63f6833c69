"""deploy/milvus-cluster.yaml, statically: it parses, it is a Milvus Operator resource in cluster mode, and the
sizing that docs/scaling.md derives (query nodes, replicas, per-node memory, DiskANN) is what it declares."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _gib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|Ti)", quantity)
    assert m, f"not a Kubernetes memory quantity: {quantity!r}"
    return float(m.group(1)) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}[m.group(2)]


def test_the_milvus_cluster_resource_has_what_the_sizing_needs() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "milvus-cluster.yaml").read_text())
    assert doc["apiVersion"] == "milvus.io/v1beta1" and doc["kind"] == "Milvus"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["mode"] == "cluster"
    deps = spec["dependencies"]
    assert deps["etcd"]["inCluster"]["values"]["replicaCount"] >= 3  # a quorum
    assert "pulsar" in deps or "kafka" in deps  # the cluster's message queue
    assert deps["storage"]["type"] in ("S3", "MinIO") and deps["storage"].get("secretRef")
    comps = spec["components"]
    for name in ("proxy", "queryNode", "dataNode", "indexNode"):
        assert comps[name]["replicas"] >= 1, name
        assert _gib(comps[name]["resources"]["requests"]["memory"]) > 0, name
    qn = comps["queryNode"]
    replicas = spec["config"]["queryNode"]["replicas"]
    assert replicas >= 2 and qn["replicas"] % replicas == 0  # whole replica groups
    per_node = 1_000_000_000 / (qn["replicas"] // replicas)
    pq_gib = per_node * 256 * 4 * spec["config"]["common"]["DiskIndex"]["PQCodeBudgetGBRatio"] / 2**30
    assert _gib(qn["resources"]["limits"]["memory"]) >= 2 * pq_gib  # codes plus caches and the process
    assert any(m["mountPath"].startswith("/var/lib/milvus") for m in qn["volumeMounts"])  # DiskANN's local disk
    text = (ROOT / "docs" / "scaling.md").read_text()
    assert "deploy/milvus-cluster.yaml" in text and f"{qn['replicas']} query nodes" in text
