"""Flow run names that tell runs apart: project, date and a short id.

Prefect names a run it creates with two random words (``crimson-fox``), and the UI's run
form fills in a random name of its own (``omega118-broglie-a``: a Greek letter, often
with a number, then one or two words) that the user may overwrite. A random name is
replaced by ``<project>-<date>-<id>``; a typed one is kept, so "rerun after the profile
fix" stays findable. A typed name shaped like the UI's (``beta-cohort``) is renamed too:
the form gives no other sign of which it was.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from importlib import resources
from pathlib import Path


@functools.cache
def _generated_animals() -> frozenset[str]:
    """The last words of Prefect's generated names (coolname's animal lists)."""
    try:
        data = resources.files("coolname") / "data"
        words: set[str] = set()
        for item in data.iterdir():
            if item.name.startswith("animal") and item.name.endswith(".txt"):
                words.update(w.strip() for w in item.read_text().splitlines() if w.strip())
        return frozenset(words)
    except (ModuleNotFoundError, OSError):
        return frozenset()


#: The UI's run form names: ``<greek letter><digits?>-<word>[-<word>]`` (its word lists
#: are in the Prefect UI bundle; some words hold a hyphen).
_UI_NAME = re.compile(
    r"(alpha|beta|gamma|delta|epsilon|zeta|eta|theta|iota|kappa|lambda|mu|nu|xi|omicron|pi"
    r"|rho|sigma|tau|upsilon|phi|chi|psi|omega)\d*(-[a-z]+){1,3}"
)


def is_generated(name: str | None) -> bool:
    """True for a name Prefect or its UI made up, False for a typed one."""
    if not name:
        return True
    if _UI_NAME.fullmatch(name):
        return True
    words = name.split("-")
    if len(words) != 2 or not all(w.isalpha() and w.islower() for w in words):
        return False
    animals = _generated_animals()
    return words[1] in animals if animals else True


def project_slug(project: str) -> str:
    """``projects/my-study.yaml`` -> ``my-study``; a slug stays as it is."""
    return Path(project).stem


def run_name(project: str, current: str | None, run_id: str, today: dt.date) -> str:
    """The name for an extract run: a typed name is kept, else project, date and id."""
    if not is_generated(current):
        return str(current)
    return f"{project_slug(project)}-{today.isoformat()}-{run_id.replace('-', '')[:6]}"
