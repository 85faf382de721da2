"""kdbench: benchmark knowledge distillation of LLMs into domain verticals.

The library does the work (plain Python, importable without Prefect running);
``flows/`` composes it into Prefect flows. See ../README.md.
"""

__version__ = "0.2.0"
