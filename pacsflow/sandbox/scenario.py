"""A complete sandbox site: two seeded PACS and the config, project and manifest for them.

The manifest asks for studies that are only in the primary, only in the secondary, in
both (the primary must win) and in neither (they must end ``not_found``), so a new user
sees every path of the extraction without a hospital at hand.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from pacsflow.sandbox.pacs import SandboxPacs
from pacsflow.sandbox.synthetic import make_patients, study_of

PROJECT = "sandbox-demo"
#: The manifest of the studies held back for a second pull (``extra_studies``).
MORE_MANIFEST = "manifest-more.csv"


@dataclass
class SandboxSite:
    folder: Path
    primary: SandboxPacs
    secondary: SandboxPacs
    config_path: Path
    project_path: Path
    manifest_path: Path
    expected: dict[str, int] = field(default_factory=dict)
    #: Where each manifest row's study is ("primary", "secondary", "both", "neither"),
    #: in the manifest's order.
    placement: list[str] = field(default_factory=list)
    #: The studies seeded but left out of ``manifest_path`` (``extra_studies``), if any.
    more_manifest_path: Path | None = None
    more: int = 0

    def stop(self) -> None:
        self.primary.stop()
        self.secondary.stop()


def _placement(n_studies: int) -> list[str]:
    """Where each requested study lives: about half primary-only, a quarter
    secondary-only, and at least one in both and one in neither."""
    neither = max(1, n_studies // 6)
    both = max(1, n_studies // 12)
    secondary = max(1, n_studies // 4)
    primary = n_studies - neither - both - secondary
    if primary < 1:
        raise ValueError("a sandbox needs at least 4 studies")
    return (
        ["primary"] * primary + ["secondary"] * secondary + ["both"] * both + ["neither"] * neither
    )


def build_sandbox(
    folder: Path,
    *,
    primary_port: int,
    secondary_port: int,
    receiver_port: int,
    n_studies: int = 12,
    instances: int = 3,
    seed: int = 0,
    retrieve_delay: float = 0.0,
    activity_log: Path | None = None,
    extra_studies: int = 0,
) -> SandboxSite:
    """Seed and start the two PACS, write ``pacsflow.yaml``, the project and the manifest.

    ``retrieve_delay`` and ``activity_log`` go to both PACS (see :class:`SandboxPacs`);
    their records share the log and are told apart by AE title. ``extra_studies`` more
    studies (alternately in the primary and the secondary) are seeded and listed in
    ``manifest-more.csv`` only, for a second pull to find something new.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    receiver = ("PACSFLOW", "127.0.0.1", receiver_port)
    destinations = {receiver[0]: (receiver[1], receiver[2])}
    busy = {"retrieve_delay": retrieve_delay, "activity_log": activity_log}
    primary = SandboxPacs("PRIMARY", primary_port, folder / "pacs-primary", destinations, **busy)
    secondary = SandboxPacs(
        "SECONDARY", secondary_port, folder / "pacs-secondary", destinations, **busy
    )

    rng = random.Random(seed)
    places = _placement(n_studies)
    rng.shuffle(places)
    more = [("primary", "secondary")[i % 2] for i in range(extra_studies)]
    rows = []
    for number, (patient, place) in enumerate(
        zip(make_patients(n_studies + extra_studies, seed), places + more, strict=True)
    ):
        accession = f"ACC{seed:02d}{number:06d}"
        study_date = dt.date(2018, 1, 1) + dt.timedelta(days=rng.randrange(6 * 365))
        modality = rng.choice(["CT", "MR"])
        study = study_of(
            patient,
            accession=accession,
            study_date=study_date,
            modality=modality,
            n_series=2,
            n_instances=instances,
            seed=seed,
        )
        if place in ("primary", "both"):
            primary.add_datasets(study)
        if place in ("secondary", "both"):
            secondary.add_datasets(study)
        rows.append(
            {
                "mrn": patient.mrn,
                "accession_number": accession,
                "study_date": study_date.isoformat(),
            }
        )
    primary.start()
    secondary.start()

    config = {
        "ledger": f"sqlite:///{folder / 'ledger.db'}",
        "receiver": {"ae_title": receiver[0], "host": receiver[1], "port": receiver[2]},
        "staging": str(folder / "staging"),
        "sources": {
            "primary": {
                "ae_title": "PRIMARY",
                "host": "127.0.0.1",
                "port": primary_port,
                "max_concurrent": 4,
                "retrieve": "move",
            },
            "secondary": {
                "ae_title": "SECONDARY",
                "host": "127.0.0.1",
                "port": secondary_port,
                "max_concurrent": 2,
                "retrieve": "get",
            },
        },
        "destinations": {"local": {"type": "filesystem", "path": str(folder / "export")}},
    }
    project = {
        "name": PROJECT,
        "sources": ["primary", "secondary"],
        "destination": "local",
        "modalities": ["CT", "MR"],
        "profile": "basic",
    }
    config_path = folder / "pacsflow.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    project_path = folder / "projects" / f"{PROJECT}.yaml"
    project_path.parent.mkdir(exist_ok=True)
    project_path.write_text(yaml.safe_dump(project, sort_keys=False))
    manifest_path = folder / "manifest.csv"
    pd.DataFrame(rows[:n_studies]).to_csv(manifest_path, index=False)
    more_path = None
    if extra_studies:
        more_path = folder / MORE_MANIFEST
        pd.DataFrame(rows[n_studies:]).to_csv(more_path, index=False)
    expected = {p: places.count(p) for p in ("primary", "secondary", "both", "neither")}
    return SandboxSite(
        folder,
        primary,
        secondary,
        config_path,
        project_path,
        manifest_path,
        expected,
        places,
        more_path,
        extra_studies,
    )


def reopen_sandbox(folder: Path) -> tuple[SandboxPacs, SandboxPacs]:
    """Start again the two PACS of the sandbox built in ``folder``, on its config's ports.

    They serve the files seeded by :func:`build_sandbox` (``pacs-primary``,
    ``pacs-secondary``), so another process can host a sandbox the demo built.
    """
    folder = Path(folder).resolve()
    config = yaml.safe_load((folder / "pacsflow.yaml").read_text())
    receiver = config["receiver"]
    destinations = {receiver["ae_title"]: (receiver["host"], receiver["port"])}
    opened = []
    for name in ("primary", "secondary"):
        source = config["sources"][name]
        storage = folder / f"pacs-{name}"
        pacs = SandboxPacs(source["ae_title"], source["port"], storage, destinations)
        try:
            opened.append(pacs.start())
        except Exception:
            for started in opened:
                started.stop()
            raise
    return opened[0], opened[1]
