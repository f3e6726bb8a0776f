"""Who asked each answer, and approvals for reviewed answers: a user's correction waits for an
admin before anyone else is served it (a correction is text put in front of the model)."""

import sqlalchemy as sa
from alembic import op

revision = "feedback_0003"
down_revision = "feedback_0002"
branch_labels = None
depends_on = None

APPROVED_BEFORE = "approved before approvals existed"


def upgrade() -> None:
    # NULL: answers from before this, or from a server without keys.
    op.add_column("answers", sa.Column("user", sa.Text))
    op.add_column("reviewed_answers", sa.Column("approved_at", sa.Text))  # NULL: pending
    op.add_column("reviewed_answers", sa.Column("approved_by", sa.Text))
    # Every reviewed answer so far was served to everyone at once: keep serving it.
    reviewed = sa.table("reviewed_answers", sa.column("created_at", sa.Text),
                        sa.column("approved_at", sa.Text), sa.column("approved_by", sa.Text))
    op.execute(reviewed.update().values(approved_at=reviewed.c.created_at,
                                        approved_by=APPROVED_BEFORE))
