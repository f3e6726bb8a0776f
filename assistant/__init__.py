"""question → retrieve (dense + BM25, fused) → prompt → model → answer + citations → feedback."""
