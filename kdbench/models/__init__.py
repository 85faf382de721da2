"""Model references (hub ids or local paths) and the embedded tiny default."""
