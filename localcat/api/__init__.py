"""The HTTP edge: one router per area over the use cases, and the guards every request passes."""
