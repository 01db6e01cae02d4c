"""A resolved profile: the rules of every layer merged, and the questions asked of them.

:class:`Profile` says what it does (``rule_for``, ``allows``, ``keeps``, its fingerprint
and the PS3.15 codes it records); :mod:`pacsflow.deid.profile.engine` applies it to a
dataset and :mod:`pacsflow.deid.profile.builder` makes one from a project's layers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from pacsflow.config import ProfileOption
from pacsflow.deid.basic_profile import KEEP_UID_TAGS, TABLE_VERSION, Action, action_for
from pacsflow.deid.dictionary import dictionary_vr
from pacsflow.deid.options import BASIC_PROFILE_CODE, OPTION_CODES
from pacsflow.deid.profile.tables import DUMMY_BY_VR, FILE_META_WRITTEN
from pacsflow.deid.profile_file import ENGINE_TAGS, ProfileMode
from pacsflow.deid.rules import DATE_VRS, Operation, PrivateKey, Rule

if TYPE_CHECKING:
    from pacsflow.deid.profile.engine import DeidContext


@dataclass(frozen=True)
class RuleSet:
    public: Mapping[int, Rule]
    private: Mapping[PrivateKey, Rule]

    def __reduce__(self):
        # Read-only views do not pickle; a profile goes to the de-identification
        # processes (pacsflow.deid.processes) as their dicts, and comes back read-only.
        return (_rule_set, (dict(self.public), dict(self.private)))


def _rule_set(public: dict[int, Rule], private: dict[PrivateKey, Rule]) -> RuleSet:
    return RuleSet(MappingProxyType(public), MappingProxyType(private))


@dataclass(frozen=True)
class ManufacturerRules:
    """Rules of one ``manufacturers`` entry; ``pattern`` is searched in Manufacturer."""

    pattern: re.Pattern[str]
    rules: RuleSet
    source: str


@dataclass(frozen=True, eq=False)
class Profile:
    """A resolved de-identification profile. Build it with :func:`build_profile`.

    Immutable and safe to share between threads; one per project and worker process.
    """

    base: str
    mode: ProfileMode
    options: tuple[ProfileOption, ...]
    rules: RuleSet
    manufacturers: tuple[ManufacturerRules, ...] = ()
    files: tuple[Path, ...] = ()
    _by_manufacturer: dict[str, RuleSet] = field(default_factory=dict, repr=False)
    _default_rules: dict[tuple[int, str | None], Rule | None] = field(
        default_factory=dict, repr=False
    )
    """The engine's default rule per (tag, VR as stored), for attributes no layer lists."""

    # --- what the profile is -------------------------------------------------------

    @cached_property
    def shifts_dates(self) -> bool:
        """True when some rule shifts dates, so instances need a non-zero date shift."""
        rule_sets = [self.rules, *(m.rules for m in self.manufacturers)]
        return ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options or any(
            rule.op is Operation.SHIFT_DATE
            for rules in rule_sets
            for rule in [*rules.public.values(), *rules.private.values()]
        )

    @cached_property
    def cleans(self) -> bool:
        """True when some rule cleans text, so identifiers must be collected first."""
        rule_sets = [self.rules, *(m.rules for m in self.manufacturers)]
        return any(
            rule.op is Operation.CLEAN
            for rules in rule_sets
            for rule in [*rules.public.values(), *rules.private.values()]
        )

    @cached_property
    def fingerprint(self) -> str:
        """Short stable hash of what the profile does (not where each rule came from).

        Two projects with the same fingerprint de-identify identically (given their keys);
        recorded with each export for audit.
        """

        def rules(rule_set: RuleSet) -> list[list[str]]:
            public = [[f"{tag:08X}", r.canonical()] for tag, r in rule_set.public.items()]
            private = [[str(k), r.canonical()] for k, r in rule_set.private.items()]
            return sorted(public) + sorted(private)

        document = {
            "base": self.base,
            "table": TABLE_VERSION,
            "mode": self.mode.value,
            "options": sorted(o.value for o in self.options),
            "rules": rules(self.rules),
            "manufacturers": [[m.pattern.pattern, rules(m.rules)] for m in self.manufacturers],
        }
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @cached_property
    def method_codes(self) -> tuple[tuple[str, str, str], ...]:
        """PS3.16 CID 7050 codes recorded in De-identification Method Code Sequence."""
        return (BASIC_PROFILE_CODE, *(OPTION_CODES[o] for o in self.options))

    @property
    def method_description(self) -> str:
        """De-identification Method (0012,0063); LO, so at most 64 characters."""
        return f"pacsflow {self.base} {self.mode.value} {self.fingerprint} (PS3.15 {TABLE_VERSION})"

    def rule_for(
        self, tag: int, private_creator: str | None = None, manufacturer: str | None = None
    ) -> Rule | None:
        """The explicit rule for an attribute, or None when the defaults apply."""
        rules = self.rules_for_manufacturer(manufacturer or "")
        if tag >> 16 & 1:
            if private_creator is None:
                return None
            key = PrivateKey(tag >> 16, private_creator.strip(" \x00"), tag & 0xFF)
            return rules.private.get(key)
        return rules.public.get(tag)

    def allows(
        self, tag: int, private_creator: str | None = None, manufacturer: str | None = None
    ) -> bool:
        """Whether an attribute may survive de-identification under this profile.

        For the PHI gate's defence in depth: an attribute of the output for which this is
        False means the engine let through what the profile forbids. ``private_creator``
        is the creator of a private attribute's block (for a Private Creator element, its
        own value). Without ``manufacturer`` the answer is True if the base rules or any
        manufacturer override allow it.
        """
        tag = int(tag)
        group, element = tag >> 16, tag & 0xFFFF
        if tag in ENGINE_TAGS:
            return True
        if group == 0x0002:
            return tag in FILE_META_WRITTEN
        rule_sets = self._candidate_rule_sets(manufacturer)
        if group & 1:
            if private_creator is None or element < 0x10:
                return False
            creator = private_creator.strip(" \x00")
            if element <= 0xFF:  # a Private Creator: kept while some element of it is
                return any(
                    key.group == group
                    and key.creator == creator
                    and rule.op is not Operation.REMOVE
                    for rules in rule_sets
                    for key, rule in rules.private.items()
                )
            key = PrivateKey(group, creator, element & 0xFF)
            return any(
                (rule := rules.private.get(key)) is not None and rule.op is not Operation.REMOVE
                for rules in rule_sets
            )
        for rules in rule_sets:
            rule = rules.public.get(tag)
            if rule is not None and rule.op is not Operation.REMOVE:
                return True
        if any(tag in rules.public for rules in rule_sets):
            return False
        if element == 0 or self.mode is ProfileMode.ALLOW_LIST:
            return False
        return action_for(tag) is not Action.REMOVE  # curve and overlay groups

    def keeps(self, tag: int) -> bool:
        """Whether an attribute leaves exactly as it came, under some rule set.

        For the PHI gate: what the project keeps on purpose (a station name under Retain
        Device Identity, a date a profile file keeps) is not looked for elsewhere.
        """
        from pacsflow.deid.profile.engine import unlisted_rule  # engine imports this module

        tag = int(tag)
        rule_sets = self._candidate_rule_sets(None)
        if any(
            (rule := rules.public.get(tag)) is not None and rule.op is Operation.KEEP
            for rules in rule_sets
        ):
            return True
        if any(tag in rules.public for rules in rule_sets):
            return False
        if self.mode is ProfileMode.ALLOW_LIST or tag >> 16 & 1 or not tag & 0xFFFF:
            return False
        vr = dictionary_vr(tag)
        if vr == "UI":
            return ProfileOption.RETAIN_UIDS in self.options or tag in KEEP_UID_TAGS
        if vr in ("SQ", "UN") or action_for(tag) is Action.REMOVE:
            return False
        if vr in DATE_VRS and ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            return False
        return unlisted_rule(tag, vr) is None

    def written_values(self, context: DeidContext) -> frozenset[str]:
        """Values the engine itself writes: the gate never searches them (a patient named
        "Profile" is not in the de-identification method, nor "Site" in RESEARCH SITE)."""
        values = {context.patient_pseudonym, self.method_description, "YES", "MODIFIED"}
        for code in self.method_codes:
            values.update(code)
        values.update(v for v in DUMMY_BY_VR.values() if isinstance(v, str))
        for rules in self._candidate_rule_sets(None):
            for rule in [*rules.public.values(), *rules.private.values()]:
                if rule.op is Operation.REPLACE and rule.value is not None:
                    value = rule.value
                    parts = value if isinstance(value, tuple) else (value,)
                    values.add("\\".join(str(v) for v in parts))
        return frozenset(values)

    def _candidate_rule_sets(self, manufacturer: str | None) -> list[RuleSet]:
        if manufacturer is not None:
            return [self.rules_for_manufacturer(manufacturer)]
        return [self.rules, *(self._rules_for_override(m) for m in self.manufacturers)]

    def _rules_for_override(self, override: ManufacturerRules) -> RuleSet:
        key = f"\x00{override.source}"  # no Manufacturer value holds NUL (LO, PS3.5 6.2)
        cached = self._by_manufacturer.get(key)
        if cached is None:
            cached = self._by_manufacturer[key] = merge_rules(self.rules, [override.rules])
        return cached

    def rules_for_manufacturer(self, manufacturer: str) -> RuleSet:
        """The rules for an instance of ``manufacturer``: base rules plus every matching
        override, merged once per manufacturer and cached."""
        if not self.manufacturers:
            return self.rules
        cached = self._by_manufacturer.get(manufacturer)
        if cached is None:
            matching = [m.rules for m in self.manufacturers if m.pattern.search(manufacturer)]
            cached = merge_rules(self.rules, matching) if matching else self.rules
            self._by_manufacturer[manufacturer] = cached  # a benign race: same value
        return cached

    def deidentify(self, ds: Dataset, context: DeidContext) -> Dataset:
        """De-identify ``ds`` in place and return it (see :func:`engine.deidentify`)."""
        # Imported here: the engine needs Profile, and Profile only delegates to it.
        from pacsflow.deid.profile.engine import deidentify

        return deidentify(self, ds, context)


def merge_rules(base: RuleSet, layers: Iterable[RuleSet]) -> RuleSet:
    public = dict(base.public)
    private = dict(base.private)
    for layer in layers:
        public.update(layer.public)
        private.update(layer.private)
    return RuleSet(MappingProxyType(public), MappingProxyType(private))
