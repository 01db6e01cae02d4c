"""Prefect's cache, keyed on project and study: the second guard after the ledger.

A task run per study would cost more than a small study's transfer, so studies are not
cached tasks; instead, when an export lane exports a study it writes a record to Prefect's
result store under a key hashed from the project and the study's random ledger handle
(``ref``: no identifier is hashed). Before a lane works on a claimed study it looks for
that record: a study Prefect saw exported whose ledger update was lost (a ledger that went
down at that moment) is marked exported from the record, not fetched again. A requeued
study gets a new ``ref``, so an old record never answers for it.

The record holds only what the export already shows: pseudonyms and a count.
"""

from __future__ import annotations

import hashlib
import logging

from prefect.results import get_result_store

LOGGER = logging.getLogger(__name__)


def study_key(project: str, ref: str) -> str:
    return "pacsflow-study-" + hashlib.sha256(f"{project}|{ref}".encode()).hexdigest()


def exported_before(project: str, ref: str) -> dict | None:
    """The export record of (project, study), or None."""
    store = get_result_store()
    key = study_key(project, ref)
    try:
        if not store.exists(key):
            return None
        return store.read(key).result
    except Exception:  # an unreadable record is no record: the ledger decides
        LOGGER.warning("could not read a study's cache record; ignoring it", exc_info=True)
        return None


def remember_export(project: str, ref: str, record: dict) -> None:
    try:
        get_result_store().write(record, key=study_key(project, ref))
    except Exception:  # the cache is a second guard; losing a record loses nothing
        LOGGER.warning("could not write a study's cache record", exc_info=True)
