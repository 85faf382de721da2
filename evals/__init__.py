"""lm-evaluation-harness glue: task hooks, templates, public-benchmark maps."""
