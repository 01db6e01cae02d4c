"""A site, a project and a manifest around Orthanc servers, as the integration tests
build them: every source on 127.0.0.1, a filesystem destination ``out``, and a project
key secret of its own per test (the tests share one Prefect server)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pacsflow.config import SiteConfig


def orthanc_source(server, *, retrieve: str = "move", **settings: Any) -> dict[str, Any]:
    """A site's source entry for the Orthanc ``server`` (its AE title and DICOM port).

    ``settings`` are further ``SourceConfig`` fields (``max_concurrent``, ``timeout``...).
    """
    return {
        "ae_title": server.aet,
        "host": "127.0.0.1",
        "port": server.dicom_port,
        "retrieve": retrieve,
        **settings,
    }


def filesystem_site(
    folder: Path, ledger: str, receiver_port: int, sources: Mapping[str, dict[str, Any]]
) -> SiteConfig:
    """A site exporting to ``folder / "export"`` (destination ``out``), staging beside it."""
    return SiteConfig.model_validate(
        {
            "ledger": ledger,
            "receiver": {"ae_title": "PACSFLOW", "port": receiver_port},
            "staging": str(folder / "staging"),
            "sources": dict(sources),
            "destinations": {"out": {"type": "filesystem", "path": str(folder / "export")}},
        }
    )


def write_project(folder: Path, name: str, sources: list[str], **settings: Any) -> Path:
    """``folder/projects/NAME.yaml``, exporting to ``out``, with a key secret named after
    the test's folder so that no two tests share pseudonyms."""
    path = folder / "projects" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    key = f"{name}-key-{folder.name[-12:].lower().replace('_', '-')}"
    project = {"name": name, "sources": sources, "destination": "out", "key_secret": key}
    path.write_text(yaml.safe_dump({**project, **settings}))
    return path


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    """``folder/manifest.csv`` of ``rows`` (mrn, accession_number, study_date)."""
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
