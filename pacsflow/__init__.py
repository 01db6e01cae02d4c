"""pacsflow's domain: manifests, configuration, the ledger, DICOM query/retrieve, de-
identification and export. Nothing here imports Prefect (see ``flows/`` for that)."""

import logging

__version__ = "0.1.0"

# A library logs through the standard logger and leaves handling to the application.
logging.getLogger(__name__).addHandler(logging.NullHandler())
