"""Find the site config and the project a command means, forgivingly.

Every command takes ``--project`` as a project file *or* a slug, and ``--config`` may be
left out: ``pacsflow.yaml`` here is used, else the one ``pacsflow demo`` wrote. What
cannot be found is an error that lists what is known, so a typo never silently reports
zeros for a project that does not exist.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import select

from pacsflow.errors import ConfigError
from pacsflow.ledger.models import Study

SITE_FILE = Path("pacsflow.yaml")
#: Where ``pacsflow demo`` writes its site, project and manifest.
DEMO_FOLDER = Path(".pacsflow/demo")


def site_config_path(config: Path | None) -> Path:
    """``config`` if given, else ``pacsflow.yaml`` here, else the demo's site file."""
    if config is not None:
        return config
    for candidate in (SITE_FILE, DEMO_FOLDER / SITE_FILE):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"no site config: neither {SITE_FILE} nor {DEMO_FOLDER / SITE_FILE} exists here; "
        "pass --config with your site file (or run `pacsflow demo` first)"
    )


def project_files(config: Path) -> dict[str, Path]:
    """Slug -> file of the projects in ``projects/`` here and beside the site config."""
    found: dict[str, Path] = {}
    for folder in (Path("projects"), config.parent / "projects"):
        for path in sorted(folder.glob("*.y*ml")):
            found.setdefault(_slug_of(path), path)
    return found


def _slug_of(path: Path) -> str:
    """The project's ``name`` (its slug) as written in the file, else the file's stem."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return path.stem
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else path.stem


def ledger_projects(session) -> list[str]:
    """Projects that have studies in the ledger."""
    return sorted(session.scalars(select(Study.project).distinct()))


def _unknown(project: str, known: list[str]) -> ConfigError:
    listed = ", ".join(sorted(set(known))) or "none yet"
    return ConfigError(
        f"unknown project {project!r}: it is neither a project file nor a known slug. "
        f"Known projects: {listed}. Pass a project file path or one of these slugs."
    )


def project_file(project: str, config: Path) -> Path:
    """The project file ``project`` names: a path to one, or the slug of a known one."""
    path = Path(project)
    if path.is_file():
        return path
    files = project_files(config)
    if project in files:
        return files[project]
    raise _unknown(project, list(files))


def project_slug(project: str, config: Path, in_ledger: list[str]) -> str:
    """The slug ``project`` names: from a project file, or a slug of a file or the ledger."""
    path = Path(project)
    if path.is_file():
        return _slug_of(path)
    files = project_files(config)
    if project in files or project in in_ledger:
        return project
    raise _unknown(project, [*files, *in_ledger])
