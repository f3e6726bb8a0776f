"""Learned retrieval versions: which embedder and vector collection serve each collection."""

import sqlalchemy as sa
from alembic import op

revision = "chunks_0003"
down_revision = "chunks_0002"
branch_labels = None
depends_on = None

NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    # Checked first: a SQLite file rewound to an older user_version adopts what it has.
    schema = sa.inspect(op.get_bind())
    columns = {c["name"] for c in schema.get_columns("collections")}
    # NULL vectors: the collection's own name (r0, as ingested). `embedder` stays the served one.
    if "vectors" not in columns:
        op.add_column("collections", sa.Column("vectors", sa.Text))
    if "version" not in columns:
        op.add_column("collections",
                      sa.Column("version", sa.Integer, nullable=False, server_default="0"))
    if not schema.has_table("retrieval_versions"):
        op.create_table(
            "retrieval_versions",
            sa.Column("collection", sa.Text, primary_key=True),
            sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("embedder", sa.Text, nullable=False),
            sa.Column("vectors", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
            sa.Column("created_at", sa.Text, nullable=False, server_default=NOW),
        )
    if not schema.has_table("retrieval_switches"):
        op.create_table(
            "retrieval_switches",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("collection", sa.Text, nullable=False),
            sa.Column("from_version", sa.Integer, nullable=False),
            sa.Column("to_version", sa.Integer, nullable=False),
            sa.Column("at", sa.Text, nullable=False, server_default=NOW),
        )
