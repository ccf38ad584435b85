"""Importers of checkpoints trained outside this project (see `deepseek`)."""
