"""Alembic's entry: LocalCat runs migrations itself (core/db.py ``upgrade``) on a connection it
holds in a write transaction, and gives each store its own version table."""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    version_table=config.attributes["version_table"],
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
