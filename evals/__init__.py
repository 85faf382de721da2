"""lm-evaluation-harness glue shared by every pack: the hooks their task YAMLs call (data loading,
scoring generations with exact match and ROUGE-L) and the templates new packs' task files are written from.
Which public lm-eval tasks belong to a pack is said in its pack.yaml (public_tasks)."""
