"""A collection's generation: bumped by every write to its chunks, so each server rebuilds its own
BM25 index when the shared database moves on (``bm25_dirty`` was one flag for one server)."""

import sqlalchemy as sa
from alembic import op

revision = "chunks_0004"
down_revision = "chunks_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "generation" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("collections")}:
        return  # a SQLite file rewound to an older user_version
    op.add_column("collections",
                  sa.Column("generation", sa.Integer, nullable=False, server_default="1"))
