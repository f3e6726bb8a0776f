"""Reviewed answers: a user's correction kept with the question it answers, so the next person
asking the same thing gets it at once (long before a fine-tune learns it)."""

import sqlalchemy as sa
from alembic import op

from core.schemas import normalize_question

revision = "feedback_0002"
down_revision = "feedback_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviewed_answers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("collection", sa.Text, nullable=False),
        sa.Column("question", sa.Text, nullable=False),  # the answer's standalone question
        sa.Column("normalized", sa.Text, nullable=False),  # normalize_question: for exact hits
        sa.Column("answer", sa.Text, nullable=False),  # the correction
        sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
        sa.Column("feedback_id", sa.Integer, sa.ForeignKey("feedback.id"), nullable=False),
        sa.Column("user", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.Text),
        sa.Column("revoked_by", sa.Text),  # who, or "superseded by #id"
    )
    op.create_index("reviewed_by_collection", "reviewed_answers", ["collection", "revoked_at"])
    # Corrections given before this table existed count too (each answer's latest verdict).
    db = op.get_bind()
    rows = db.execute(sa.text("""
        SELECT a.collection, a.standalone_question, f.correction, a.id AS answer_id,
               f.id AS feedback_id, f."user" AS who, f.created_at
        FROM feedback f JOIN answers a ON a.id = f.answer_id
        WHERE f.correction IS NOT NULL
          AND f.id = (SELECT max(g.id) FROM feedback g WHERE g.answer_id = f.answer_id)
        ORDER BY f.id""")).fetchall()
    if rows:
        db.execute(sa.text("""
            INSERT INTO reviewed_answers (collection, question, normalized, answer, answer_id,
                                          feedback_id, "user", created_at)
            VALUES (:c, :q, :n, :a, :aid, :fid, :u, :t)"""), [
            {"c": r.collection, "q": r.standalone_question,
             "n": normalize_question(r.standalone_question), "a": r.correction,
             "aid": r.answer_id, "fid": r.feedback_id, "u": r.who, "t": r.created_at}
            for r in rows])
