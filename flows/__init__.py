"""Prefect flows and tasks: where pacsflow meets Prefect.

Every flow run of a process that imports this package sends its heartbeats through
:mod:`flows.heartbeats`, which ends them as soon as the run does.
"""

from flows import heartbeats

heartbeats.install()
