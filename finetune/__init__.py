"""feedback → data sets → LoRA → eval → adapter + Modelfile → registered model."""
