"""A snapshot of every answer, and the ratings and corrections users give it."""

import sqlalchemy as sa
from alembic import op

revision = "feedback_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "answers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("standalone_question", sa.Text, nullable=False),
        sa.Column("history", sa.Text, nullable=False),  # JSON list of Message
        sa.Column("collection", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("citations", sa.Text, nullable=False),  # JSON list of Citation
        sa.Column("grounded", sa.Integer, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prompt_version", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("extra", sa.Text, nullable=False, server_default="{}"),  # JSON: later fields
    )
    # An integer key keeps insertion order: "latest feedback wins" is the highest id.
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
        sa.Column("rating", sa.Text),
        sa.Column("correction", sa.Text),
        sa.Column("comment", sa.Text),
        sa.Column("user", sa.Text),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.CheckConstraint("rating IN ('up', 'down')"),
    )
    op.create_index("feedback_answer_id", "feedback", ["answer_id"])
