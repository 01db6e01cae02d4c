"""What a worker process loads once and reuses: the workspace, keys and profiles.

Site blocks and the project's key secret are read from the Prefect API at most once per
:data:`TTL` seconds per process, not once per task or study: with lanes that process
hundreds of studies each, a round trip per study would cost more than a small study's
transfer. A block edited in the UI is seen within the TTL. Nothing is loaded at import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from blocks.projects import known_projects
from blocks.secrets import project_key
from blocks.site import load_site
from pacsflow.config import ProjectConfig, SiteConfig, load_project_config
from pacsflow.deid.profile import Profile, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.errors import ConfigError
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.pipeline import Workspace

#: Seconds a loaded block or secret is reused before it is read again.
TTL = 60.0

#: How old the blocks a flow run starts with may be. A run of process-studies that
#: extract-project starts in its own process a moment after reading them takes those
#: (reading them again cost 0.1 s of start-up); a run on a worker reads its own.
FRESH = 10.0

_T = TypeVar("_T")
_lock = threading.Lock()
_loaded: dict[tuple, tuple[float, object]] = {}
_workspaces: dict[str, Workspace] = {}
_pseudonymizers: dict[str, Pseudonymizer] = {}
_profiles: dict[tuple, Profile] = {}


def _cached(key: tuple, load: Callable[[], _T], ttl: float) -> _T:
    now = time.monotonic()
    with _lock:
        hit = _loaded.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]  # type: ignore[return-value]
    value = load()
    with _lock:
        _loaded[key] = (now, value)
    return value


def site_config(site_block: str, ttl: float = TTL) -> SiteConfig:
    """The site saved as ``site_block`` (``pacsflow configure``), read at most every ``ttl`` s."""
    return _cached(("site", site_block), lambda: load_site(site_block), ttl)


def workspace(site_block: str, ttl: float = TTL) -> Workspace:
    """The workspace for the site; one per site configuration per process.

    The ledger engine, its migrations and the claim-renewing thread are made once. A
    flow run reads the blocks afresh once (``ttl=0``, or :data:`FRESH`); its tasks then
    reuse them.
    """
    site = site_config(site_block, ttl)
    key = site.model_dump_json()
    with _lock:
        if key not in _workspaces:
            engine = make_engine(site.ledger)
            migrate(engine)
            _workspaces[key] = Workspace(site=site, sessions=session_factory(engine))
        return _workspaces[key]


def pseudonymizer(project: ProjectConfig, site: str, ttl: float = TTL) -> Pseudonymizer:
    """The project's pseudonymizer from its Secret block for ``site``, read at most every
    ``ttl`` s (the Secret is named per site: ``blocks.secrets``).

    The run's key check reads it with ``ttl=0``, so a key changed in the UI is refused
    at the start of the next run (see ``repository.check_project_key``).
    """
    key = _cached(
        ("key", site, project.key_secret_name),
        lambda: project_key(project.key_secret_name, site),
        ttl,
    )
    with _lock:
        if key not in _pseudonymizers:
            _pseudonymizers[key] = Pseudonymizer.from_hex(key)
        return _pseudonymizers[key]


def profile(project: ProjectConfig) -> Profile:
    """The project's de-identification profile, rebuilt when a profile file changes."""
    files = project.resolved_profile_files
    stamps = tuple((str(f), f.stat().st_mtime_ns if f.exists() else 0) for f in files)
    key = (project.profile, tuple(project.profile_options), stamps)
    with _lock:
        if key not in _profiles:
            _profiles[key] = build_profile(project.profile, project.profile_options, files)
        return _profiles[key]


def resolve_project(project: str, site: str = "default") -> ProjectConfig:
    """A project file path, or a slug: registered for ``site`` or ``projects/<slug>.yaml``.

    The run form offers the registered slugs; a path still works for scripts. An
    unknown slug is an error that lists the known ones.
    """
    path = Path(project)
    if path.suffix:
        return load_project_config(path)
    registered = known_projects(site)
    if project in registered:
        return load_project_config(registered[project])
    path = Path("projects") / f"{project}.yaml"
    if path.exists():
        return load_project_config(path)
    known = ", ".join(sorted(registered)) or "none yet"
    raise ConfigError(
        f"unknown project {project!r} for site {site!r} (known: {known}); register it with "
        "`pacsflow project add PROJECT_FILE`, or pass the project file's path"
    )
