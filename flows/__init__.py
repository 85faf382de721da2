"""Prefect flows: thin task wrappers around kdbench.steps."""
