"""An in-process PACS and synthetic hospital-like studies, for tests and ``pacsflow sandbox``."""

from pacsflow.sandbox.pacs import PortInUseError, SandboxPacs
from pacsflow.sandbox.synthetic import FakePatient, make_patients, make_study, study_of, write_study

__all__ = [
    "FakePatient",
    "PortInUseError",
    "SandboxPacs",
    "make_patients",
    "make_study",
    "study_of",
    "write_study",
]
