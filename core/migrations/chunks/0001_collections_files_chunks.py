"""Collections, the manifest of ingested files, and the text of every chunk."""

import sqlalchemy as sa
from alembic import op

revision = "chunks_0001"
down_revision = None
branch_labels = None
depends_on = None

NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    # Index files from before the numbered migrations have this very schema: adopt them.
    if sa.inspect(op.get_bind()).has_table("collections"):
        return
    op.create_table(
        "collections",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("embedder", sa.Text, nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("bm25_dirty", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.Text, nullable=False, server_default=NOW),
    )
    op.create_table(
        "files",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("file_hash", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Text, nullable=False, server_default=NOW),
        sa.CheckConstraint("state IN ('pending', 'done')"),
    )
    op.create_table(
        "chunks",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("file_hash", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("page", sa.Integer),
        sa.Column("heading", sa.Text),
        sa.Column("anchor", sa.Text),
    )
    op.create_index("chunks_by_path", "chunks", ["collection", "path"])
