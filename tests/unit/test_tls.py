"""DICOM over TLS to a source: verified against its CA, refused when it cannot be verified."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest

from pacsflow.config import SourceConfig
from pacsflow.dicom.query import StudyQuery, find_studies
from pacsflow.errors import SourceUnavailable
from pacsflow.sandbox import SandboxPacs, make_patients, study_of
from tests.pki import make_pki


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    return make_pki(tmp_path)


@pytest.fixture
def tls_pacs(tmp_path: Path, pki: dict[str, Path]):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki["server"]), str(pki["server-key"]))
    patient = make_patients(1, seed=3)[0]
    study = study_of(
        patient,
        accession="TLS0001",
        study_date=dt.date(2024, 1, 2),
        n_series=1,
        n_instances=1,
    )
    pacs = SandboxPacs("SECURE", 0, tmp_path / "pacs", timeout=5, ssl_context=context)
    pacs.add_datasets(study)
    with pacs:
        yield pacs, StudyQuery(None, patient.mrn, "TLS0001")


def _source(pacs: SandboxPacs, **tls) -> SourceConfig:
    host, port = pacs.address
    return SourceConfig(ae_title="SECURE", host=host, port=port, timeout=5, tls=tls or None)


def test_a_tls_source_is_queried_when_its_certificate_checks_out(tls_pacs, pki) -> None:
    pacs, query = tls_pacs
    matches = find_studies(_source(pacs, ca_file=pki["ca"]), "PACSFLOW", query)
    assert len(matches) == 1


@pytest.mark.parametrize("how", ["plain TCP", "another CA"])
def test_a_tls_source_that_cannot_be_verified_is_not_queried(tls_pacs, pki, how) -> None:
    pacs, query = tls_pacs
    source = _source(pacs) if how == "plain TCP" else _source(pacs, ca_file=pki["other-ca"])
    with pytest.raises(SourceUnavailable):
        find_studies(source, "PACSFLOW", query)
