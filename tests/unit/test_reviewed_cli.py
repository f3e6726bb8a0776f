"""`localcat reviewed`: pending corrections listed, approved, rejected; the list shows status."""

from __future__ import annotations

import json

from click.testing import CliRunner

from localcat.cli import main
from localcat.container import Container
from tests.unit.test_feedback import make_answer


def run(*args: str):
    result = CliRunner().invoke(main, ["reviewed", *args])
    return result, result.output


def test_a_pending_correction_is_listed_approved_and_another_rejected() -> None:
    store = Container().feedback
    for i, question in enumerate(("Vacation days?", "Laptops?")):
        store.record_answer(make_answer(question, id=f"ans_{i}", standalone_question=question,
                                        user="bob"))
        store.add_feedback(f"ans_{i}", "down", correction=f"fixed {i}", user="bob")

    result, out = run("list")
    assert result.exit_code == 0 and "localcat reviewed pending" in out  # nothing served yet
    result, out = run("pending", "--json")
    assert result.exit_code == 0, out
    rows = json.loads(out)
    assert [(r["question"], r["status"]) for r in rows] == [("Laptops?", "pending"),
                                                            ("Vacation days?", "pending")]
    laptops, vacation = (r["id"] for r in rows)

    result, out = run("approve", str(vacation), "--by", "root")
    assert result.exit_code == 0 and f"Approved #{vacation}" in out
    result, out = run("reject", str(laptops), "--json")
    assert result.exit_code == 0, out
    assert json.loads(out)["revoked_by"].startswith("rejected by cli:")
    # Both acts are in the admin audit log, as through the API or the page.
    audit = [(e.key_name, e.action, e.target) for e in Container().keys.audit_log(10)]
    assert ("root", "reviewed.approve", str(vacation)) in audit
    assert any(k.startswith("cli:") and a == "reviewed.reject" for k, a, _ in audit)

    result, out = run("list")
    assert "'Vacation days?'  [approved]" in out and "Laptops" not in out
    assert "No corrections await approval" in run("pending")[1]
    assert "[revoked: rejected by" in run("pending", "--all")[1]
    result, out = run("approve", str(laptops))
    assert result.exit_code == 1 and "it was revoked" in out
