"""What a worker process builds once and reuses: the workspace and pseudonymizers.

Nothing is built at import; the first task that needs it loads the blocks.
"""

from __future__ import annotations

import threading
from pathlib import Path

from blocks.secrets import project_key
from blocks.site import load_site
from pacsflow.config import ProjectConfig, load_project_config
from pacsflow.deid.profile import Profile, build_profile
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.ledger import make_engine, migrate, session_factory
from pacsflow.pipeline import Workspace

_lock = threading.Lock()
_workspaces: dict[str, Workspace] = {}
_pseudonymizers: dict[str, Pseudonymizer] = {}
_profiles: dict[tuple, Profile] = {}


def workspace(site_block: str) -> Workspace:
    """The workspace for the site saved as ``site_block``; reused while it is unchanged."""
    site = load_site(site_block)
    key = site.model_dump_json()
    with _lock:
        if key not in _workspaces:
            engine = make_engine(site.ledger)
            migrate(engine)
            _workspaces[key] = Workspace(site=site, sessions=session_factory(engine))
        return _workspaces[key]


def pseudonymizer(project: ProjectConfig) -> Pseudonymizer:
    """The project's pseudonymizer, from its Secret block as it is now.

    The secret is read on every call (a key changed while a worker runs must be seen,
    so the ledger's key check can refuse it); the object is reused per key.
    """
    key = project_key(project.key_secret_name)
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


def resolve_project(project: str) -> ProjectConfig:
    """A project file path, or a slug looked up as ``projects/<slug>.yaml``."""
    path = Path(project)
    if not path.suffix:
        path = Path("projects") / f"{project}.yaml"
    return load_project_config(path)
