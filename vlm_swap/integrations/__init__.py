"""Integrations with evaluation and serving tools (each imported only when that tool is used)."""
