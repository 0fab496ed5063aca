"""Policy Agent and its device renderers: not implemented yet (issue 4)."""
