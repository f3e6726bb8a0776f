"""Fine-tuned model versions, and the log of which one was served when."""

import sqlalchemy as sa
from alembic import op

revision = "models_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text, nullable=False, unique=True),  # v1, v2, ...
        sa.Column("run", sa.Text, nullable=False),  # the fine-tune run that made it
        # what was active when it was registered
        sa.Column("parent", sa.Integer, sa.ForeignKey("versions.id")),
        sa.Column("base_name", sa.Text, nullable=False),
        sa.Column("base_path", sa.Text, nullable=False),
        sa.Column("base_sha256", sa.Text, nullable=False),
        sa.Column("trainer", sa.Text, nullable=False),
        sa.Column("adapter_gguf", sa.Text, nullable=False),
        sa.Column("adapter_sha256", sa.Text, nullable=False),
        sa.Column("adapter_dir", sa.Text, nullable=False),  # PEFT safetensors + config
        sa.Column("modelfile", sa.Text, nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),  # JSON: run, sha256, counts
        sa.Column("metrics", sa.Text, nullable=False),  # JSON: the evaluation's metrics
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("ollama_name", sa.Text),  # name:tag in Ollama, when registered there
        sa.Column("ollama_host", sa.Text),
        sa.Column("active", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.CheckConstraint("status IN ('promoted', 'forced')"),
    )
    op.create_index("versions_one_active", "versions", ["active"], unique=True,
                    sqlite_where=sa.text("active = 1"), postgresql_where=sa.text("active = 1"))
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer, primary_key=True),
        # NULL: the base model, no adapter
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id")),
        sa.Column("at", sa.Text, nullable=False),
    )
