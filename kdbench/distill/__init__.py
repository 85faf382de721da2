"""Distillation: pure losses, one file per algorithm family, one explicit registry."""
