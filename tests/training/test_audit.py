"""The audit ranking (training/audit.py), the one both ``vidret audit`` and the server's computed audit use."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from training.audit import AUDIT_COLUMNS, audit_csv, rank


def test_rank_orders_by_one_minus_p_label_and_keeps_ties_in_row_order() -> None:
    rows = [SimpleNamespace(id=f"v{i}", label=lab) for i, lab in enumerate(["a", "b", "a", "b"])]
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.7, 0.3]])
    ranked, order, suspicion = rank(rows, probs, ["a", "b"])
    assert [r.id for r in ranked] == ["v2", "v1", "v3", "v0"]  # v1 and v3 tie: row order
    assert order.tolist() == [2, 1, 3, 0]
    np.testing.assert_allclose(suspicion, [0.1, 0.7, 0.8, 0.7])
    top = ranked[0]
    assert (top.label, top.predicted) == ("a", "b")
    assert (top.p_label, top.p_predicted) == (0.2, 0.8)
    text = audit_csv(ranked).splitlines()
    assert text[0] == ",".join(AUDIT_COLUMNS) and text[1] == "v2,a,0.200000,b,0.800000,0.800000"


def test_rank_of_nothing_is_empty() -> None:
    ranked, order, _ = rank([], np.zeros((0, 2)), ["a", "b"])
    assert ranked == [] and order.tolist() == [] and audit_csv(ranked) == "id\n"
