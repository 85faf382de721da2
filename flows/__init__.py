"""Prefect flows: thin task wrappers around kdbench.steps.

Importing this package sets up kdbench's console output and sends the
``kdbench`` logger's records to the Prefect run they happen in (the run's logs
in the Prefect UI), in every process that runs a flow: the CLI, ``kdbench
schedule`` and a work pool's workers alike.
"""

import logging

from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

from kdbench.log import ROOT, setup


class RunLogs(APILogHandler):
    """Prefect's API log handler, silent outside a flow or task run (kdbench is also used without Prefect)."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import get_run_context

        try:
            get_run_context()
        except MissingContextError:
            return
        super().emit(record)


setup()
if not any(isinstance(h, RunLogs) for h in logging.getLogger(ROOT).handlers):
    logging.getLogger(ROOT).addHandler(RunLogs())
