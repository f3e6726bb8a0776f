"""The edges: the composition root, the `localcat` command, the server and the eval command."""
