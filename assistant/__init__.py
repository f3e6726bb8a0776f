"""question → retrieve → prompt → model → answer + citations → feedback."""
