"""The Gradio page, rendering what assistant/ gives it."""
