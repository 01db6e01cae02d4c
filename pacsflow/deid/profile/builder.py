"""Build a project's :class:`Profile` from its layers: base table, options, files.

Layers, each overriding the one before:

1. the base: PS3.15 Table E.1-1 (Basic Profile), or in ``allow_list`` mode only what a
   valid instance needs (:data:`~pacsflow.deid.profile.tables.ALLOW_LIST_REQUIRED`);
2. the PS3.15 options the project enables (:mod:`pacsflow.deid.options`);
3. the project's profile files, in order;
4. manufacturer overrides from those files, chosen per instance by its Manufacturer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from types import MappingProxyType

from pacsflow.config import ProfileOption
from pacsflow.deid.basic_profile import BASIC_PROFILE, BASIC_PROFILE_CODES
from pacsflow.deid.options import option_rules
from pacsflow.deid.profile.resolved import ManufacturerRules, Profile, RuleSet
from pacsflow.deid.profile.tables import ACTION_OPERATION, ALLOW_LIST_REQUIRED
from pacsflow.deid.profile_file import ProfileFile, ProfileMode, TagEntry, load_profile_file
from pacsflow.deid.rules import PrivateKey, Rule
from pacsflow.errors import ConfigError

LOGGER = logging.getLogger(__name__)

PROFILE_NAMES = frozenset({"basic"})
"""Base profiles this version implements (``ProjectConfig.profile``)."""


def check_profile(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a base profile this version implements."""
    if name not in PROFILE_NAMES:
        known = ", ".join(sorted(PROFILE_NAMES))
        raise ConfigError(f"unknown de-identification profile {name!r}; known profiles: {known}")


@cache
def _basic_table_rules() -> dict[int, Rule]:
    return {
        int(tag): Rule(
            ACTION_OPERATION[action],
            source=f"PS3.15 E.1-1 {BASIC_PROFILE_CODES.get(tag, 'supplementary')}",
        )
        for tag, action in BASIC_PROFILE.items()
    }


@cache
def _allow_list_required() -> dict[int, Rule]:
    from pydicom.datadict import tag_for_keyword

    rules = {}
    for keyword, op in ALLOW_LIST_REQUIRED.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise RuntimeError(f"ALLOW_LIST_REQUIRED names {keyword!r}, unknown to pydicom")
        rules[tag] = Rule(op, source="allow_list: required for a valid instance")
    return rules


def _entry_rules(entries: Iterable[TagEntry], source: str) -> RuleSet:
    public: dict[int, Rule] = {}
    private: dict[PrivateKey, Rule] = {}
    for index, entry in enumerate(entries):
        target = entry.target()
        rule = entry.rule(f"{source}[{index}]")
        if isinstance(target, PrivateKey):
            private[target] = rule
        else:
            public[target] = rule
    return RuleSet(public, private)


def _resolve_mode(files: list[tuple[Path, ProfileFile]]) -> ProfileMode:
    modes = {path: f.mode for path, f in files if f.mode is not None}
    if ProfileMode.ALLOW_LIST in modes.values() and ProfileMode.PROFILE in modes.values():
        listed = ", ".join(f"{path}: {mode.value}" for path, mode in modes.items())
        raise ConfigError(
            f"profile files disagree on mode ({listed}); allow_list cannot be switched off "
            "by a later file. Set mode in one file only."
        )
    return (
        ProfileMode.ALLOW_LIST if ProfileMode.ALLOW_LIST in modes.values() else ProfileMode.PROFILE
    )


def build_profile(
    base: str,
    options: Iterable[ProfileOption | str] = (),
    files: Iterable[str | Path] = (),
    *,
    loaded: Iterable[tuple[Path, ProfileFile]] = (),
) -> Profile:
    """Resolve a project's profile: base table, then options, then files, in order.

    ``files`` are read with :func:`load_profile_file` (give resolved paths, e.g.
    ``ProjectConfig.resolved_profile_files``); ``loaded`` takes already-parsed files,
    for tests. Manufacturer overrides of all files are kept in file order and resolved
    per instance. Every problem is a :class:`ConfigError` naming the file and entry.
    """
    check_profile(base)
    try:
        chosen = tuple(dict.fromkeys(ProfileOption(o) for o in options))
    except ValueError as exc:
        known = ", ".join(o.value for o in ProfileOption)
        raise ConfigError(f"unknown profile option: {exc}; known options: {known}") from None
    parsed = [(Path(p), load_profile_file(p)) for p in files] + list(loaded)
    mode = _resolve_mode(parsed)

    public = dict(_basic_table_rules() if mode is ProfileMode.PROFILE else _allow_list_required())
    private: dict[PrivateKey, Rule] = {}
    for option in chosen:
        public.update(option_rules(option))
    manufacturers: list[ManufacturerRules] = []
    safe_private: dict[PrivateKey, Rule] = {}
    for path, profile_file in parsed:
        layer = _entry_rules(profile_file.tags, f"{path.name} tags")
        public.update(layer.public)
        private.update(layer.private)
        safe = _entry_rules(profile_file.safe_private, f"{path.name} safe_private")
        safe_private.update(safe.private)
        for index, override in enumerate(profile_file.manufacturers):
            source = f"{path.name} manufacturers[{index}]"
            manufacturers.append(
                ManufacturerRules(
                    re.compile(override.match), _entry_rules(override.tags, source), source
                )
            )
    if ProfileOption.RETAIN_SAFE_PRIVATE in chosen:
        if not safe_private:
            raise ConfigError(
                "profile option retain_safe_private is set but no profile file has a "
                "safe_private list; add one naming the private attributes to keep, or drop "
                "the option"
            )
        private = {**safe_private, **private}  # an explicit tags entry wins over the list
    elif safe_private:
        LOGGER.warning(
            "profile files list %d safe_private attributes but the project does not enable "
            "retain_safe_private; they are removed",
            len(safe_private),
        )
    rules = RuleSet(MappingProxyType(public), MappingProxyType(private))
    return Profile(
        base=base,
        mode=mode,
        options=chosen,
        rules=rules,
        manufacturers=tuple(manufacturers),
        files=tuple(path for path, _ in parsed),
    )
