"""API keys (only their sha256 is kept) with a role and the collections they may use, and the
audit log of admin actions."""

import sqlalchemy as sa
from alembic import op

revision = "auth_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("sha256", sa.Text, nullable=False, unique=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("collections", sa.Text),  # JSON list of names; NULL: every collection
        sa.Column("per_minute", sa.Integer),  # chat and upload limit; NULL: the settings'
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.Text),
        sa.CheckConstraint("role IN ('admin', 'user')"),
    )
    # An integer key keeps insertion order: the log reads newest first by id.
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("key_name", sa.Text),  # NULL: no key (a loopback server without keys, the CLI)
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),  # JSON
    )
