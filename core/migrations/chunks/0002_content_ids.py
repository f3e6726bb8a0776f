"""Chunk ids become content hashes (``core.schemas.chunk_id``); the old ids stay as aliases.

The vector store still holds the vectors under the old ids: ``ChunkStore.rekey_pending`` lists
them until the indexer has moved them, before the collection is next searched or written.
"""

import sqlalchemy as sa
from alembic import op

from core.schemas import chunk_id

revision = "chunks_0002"
down_revision = "chunks_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chunk_aliases",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("old_id", sa.Text, primary_key=True),
        sa.Column("new_id", sa.Text, nullable=False),
        sa.Column("vectors_moved", sa.Integer, nullable=False, server_default="0"),
    )
    db = op.get_bind()
    rows = db.execute(sa.text(
        "SELECT collection, id, path, text FROM chunks ORDER BY collection, path, position"))
    seen: dict[tuple[str, str, str], int] = {}
    moves = []
    for r in rows.fetchall():
        key = (r.collection, r.path, r.text)
        seen[key] = seen.get(key, -1) + 1
        moves.append({"c": r.collection, "old": r.id, "new": chunk_id(r.path, r.text, seen[key])})
    if moves:
        db.execute(sa.text("INSERT INTO chunk_aliases (collection, old_id, new_id) "
                           "VALUES (:c, :old, :new)"), moves)
        db.execute(sa.text("UPDATE chunks SET id = :new WHERE collection = :c AND id = :old"), moves)
    db.execute(sa.text("UPDATE collections SET bm25_dirty = 1"))  # BM25 lists chunks by id
