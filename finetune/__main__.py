"""``python -m finetune``: the fine-tune loop without the main ``localcat`` command."""

from finetune.cli import standalone

standalone(prog_name="python -m finetune")
