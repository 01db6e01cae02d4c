"""The ledger: the database that is the source of truth for what is done.

Identifiers (MRN, accession number, study UID) live here and in the raw staging area
only; Prefect sees ledger row ids.
"""

from pacsflow.ledger.database import make_engine, migrate, session_factory
from pacsflow.ledger.models import Study, StudyStatus

__all__ = ["Study", "StudyStatus", "make_engine", "migrate", "session_factory"]
