"""A project's de-identification profile: layered rules, applied to one dataset at a time.

Layers, each overriding the one before (:func:`build_profile`):

1. the base: PS3.15 Table E.1-1 (Basic Profile), or in ``allow_list`` mode only what a
   valid instance needs (:data:`ALLOW_LIST_REQUIRED`);
2. the PS3.15 options the project enables (:mod:`pacsflow.deid.options`);
3. the project's profile files, in order;
4. manufacturer overrides from those files, chosen per instance by its Manufacturer.

Why in place and lazily: this runs on every retrieved instance. pydicom keeps elements
as undecoded raw bytes until they are accessed and writes untouched raw elements back
verbatim, so only what a rule changes is decoded; pixel data and every other kept
attribute are never decoded or copied, and stay byte-identical.

What no rule mentions: in ``profile`` mode, a public attribute is kept (the Basic Profile
lists everything it removes), except that every UI value is remapped (unless it names a
class, syntax or coding scheme, :data:`KEEP_UID_TAGS`), every sequence is walked, curve
and overlay groups and private attributes are removed, and a public attribute of unknown
VR is removed. In ``allow_list`` mode it is removed. At any depth of sequence nesting the
same rules apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from pacsflow.config import ProfileOption
from pacsflow.deid.basic_profile import (
    BASIC_PROFILE,
    BASIC_PROFILE_CODES,
    KEEP_UID_TAGS,
    STANDARD_UID_ROOT,
    TABLE_VERSION,
    Action,
    action_for,
)
from pacsflow.deid.clean import IdentifierPattern
from pacsflow.deid.dates import shift_value
from pacsflow.deid.dictionary import dictionary_vr
from pacsflow.deid.options import BASIC_PROFILE_CODE, OPTION_CODES, option_rules
from pacsflow.deid.profile_file import (
    ENGINE_TAGS,
    ProfileFile,
    ProfileMode,
    TagEntry,
    load_profile_file,
)
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.deid.rules import (
    DATE_VRS,
    HASHABLE_VRS,
    TEXT_VRS,
    Operation,
    PrivateKey,
    Rule,
)
from pacsflow.errors import ConfigError

LOGGER = logging.getLogger(__name__)

PROFILE_NAMES = frozenset({"basic"})
"""Base profiles this version implements (``ProjectConfig.profile``)."""

# File Meta Information kept (PS3.10 7.1); pydicom regenerates the group length, version
# and implementation fields. Source/sending/receiving AE titles and presentation addresses
# (0002,0016)-(0002,0028) name the hospital's systems; private information (0002,0100)
# and (0002,0102) is vendor data: all dropped.
_FILE_META_KEEP = frozenset({0x00020002, 0x00020003, 0x00020010})
_FILE_META_WRITTEN = _FILE_META_KEEP | {0x00020000, 0x00020001, 0x00020012, 0x00020013}

# What allow_list mode keeps without being told, so that the output is still a valid
# instance of its IOD: identification (SOP Common, PS3.3 C.12.1), the UIDs that tie
# instances into series and studies, the Image Pixel Module (C.7.6.3), lossy-compression
# history that must never be dropped (C.7.6.1.1.5), Type 2 attributes of the Patient,
# General Study and General Series modules (as empty values), and the Code Sequence and
# SOP Instance Reference macros that sequences the project keeps are made of.
ALLOW_LIST_REQUIRED: dict[str, Operation] = {
    "SOPClassUID": Operation.KEEP,
    "SOPInstanceUID": Operation.UID,
    "SpecificCharacterSet": Operation.KEEP,
    "StudyInstanceUID": Operation.UID,
    "SeriesInstanceUID": Operation.UID,
    "FrameOfReferenceUID": Operation.UID,
    "Modality": Operation.KEEP,
    "SeriesNumber": Operation.KEEP,
    "InstanceNumber": Operation.KEEP,
    "Manufacturer": Operation.KEEP,
    "PatientBirthDate": Operation.BLANK,
    "PatientSex": Operation.BLANK,
    "StudyDate": Operation.BLANK,
    "StudyTime": Operation.BLANK,
    "ReferringPhysicianName": Operation.BLANK,
    "StudyID": Operation.BLANK,
    "AccessionNumber": Operation.BLANK,
    "SamplesPerPixel": Operation.KEEP,
    "PhotometricInterpretation": Operation.KEEP,
    "Rows": Operation.KEEP,
    "Columns": Operation.KEEP,
    "BitsAllocated": Operation.KEEP,
    "BitsStored": Operation.KEEP,
    "HighBit": Operation.KEEP,
    "PixelRepresentation": Operation.KEEP,
    "PlanarConfiguration": Operation.KEEP,
    "PixelAspectRatio": Operation.KEEP,
    "SmallestImagePixelValue": Operation.KEEP,
    "LargestImagePixelValue": Operation.KEEP,
    "NumberOfFrames": Operation.KEEP,
    "RedPaletteColorLookupTableDescriptor": Operation.KEEP,
    "GreenPaletteColorLookupTableDescriptor": Operation.KEEP,
    "BluePaletteColorLookupTableDescriptor": Operation.KEEP,
    "RedPaletteColorLookupTableData": Operation.KEEP,
    "GreenPaletteColorLookupTableData": Operation.KEEP,
    "BluePaletteColorLookupTableData": Operation.KEEP,
    "ICCProfile": Operation.KEEP,
    "PixelData": Operation.KEEP,
    "FloatPixelData": Operation.KEEP,
    "DoubleFloatPixelData": Operation.KEEP,
    "LossyImageCompression": Operation.KEEP,
    "LossyImageCompressionRatio": Operation.KEEP,
    "LossyImageCompressionMethod": Operation.KEEP,
    "CodeValue": Operation.KEEP,
    "CodingSchemeDesignator": Operation.KEEP,
    "CodingSchemeVersion": Operation.KEEP,
    "CodeMeaning": Operation.KEEP,
    "LongCodeValue": Operation.KEEP,
    "URNCodeValue": Operation.KEEP,
    "ReferencedSOPClassUID": Operation.KEEP,
    "ReferencedSOPInstanceUID": Operation.UID,
    "ReferencedFrameNumber": Operation.KEEP,
}

# Dummy values valid for each VR (PS3.5 Table 6.2-1), for D.
_DUMMY_BY_VR: dict[str, object] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMOUS",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMOUS",
    "LT": "ANONYMOUS",
    "PN": "ANONYMOUS",
    "SH": "ANONYMOUS",
    "ST": "ANONYMOUS",
    "TM": "000000",
    "UC": "ANONYMOUS",
    "UR": "ANONYMOUS",
    "UT": "ANONYMOUS",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}

_ACTION_OPERATION: dict[Action, Operation] = {
    Action.REMOVE: Operation.REMOVE,
    Action.ZERO: Operation.BLANK,
    Action.DUMMY: Operation.DUMMY,
    Action.KEEP: Operation.KEEP,
    Action.CLEAN: Operation.REMOVE,  # C without Clean Descriptors: removing is always allowed
    Action.UID: Operation.UID,
}

# Rules for attributes no layer mentions (see the module docstring).
_DEFAULT_UID = Rule(Operation.UID, source="default: every instance UID is remapped")
_DEFAULT_WALK = Rule(Operation.KEEP, source="default: sequences are walked")
_DEFAULT_SHIFT = Rule(Operation.SHIFT_DATE, source="default: dates shift with the option")
_DEFAULT_REMOVE = Rule(Operation.REMOVE, source="default")
_REMOVE_PRIVATE = Rule(Operation.REMOVE, source="PS3.15 E.1-1: private attributes X")


def check_profile(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a base profile this version implements."""
    if name not in PROFILE_NAMES:
        known = ", ".join(sorted(PROFILE_NAMES))
        raise ConfigError(f"unknown de-identification profile {name!r}; known profiles: {known}")


@lru_cache(maxsize=4096)
def _hash_purpose(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


def _vr_of(ds: Dataset, tag: int) -> str:
    """VR of an element without decoding its value (implicit VR files store none)."""
    vr = ds.get_item(tag).VR
    if vr is None or vr == "UN":
        # Implicit VR, or explicit UN written by a system that did not know the tag:
        # pydicom decodes it with the dictionary VR (config replace_un_with_known_vr).
        return dictionary_vr(tag)
    return vr


@dataclass(frozen=True)
class DeidContext:
    """What de-identifying one patient's instance needs beyond the profile.

    ``date_shift_days`` is the patient's offset (:meth:`Pseudonymizer.date_shift_days`);
    it must be non-zero when the profile shifts dates. The key is excluded from ``repr``
    by :class:`Pseudonymizer` itself.
    """

    pseudonymizer: Pseudonymizer
    patient_pseudonym: str
    date_shift_days: int = 0

    @classmethod
    def for_patient(
        cls, pseudonymizer: Pseudonymizer, patient_key: str, patient_pseudonym: str
    ) -> DeidContext:
        """Context for one patient: ``patient_key`` (MRN or PatientID) keys the date shift."""
        return cls(pseudonymizer, patient_pseudonym, pseudonymizer.date_shift_days(patient_key))


@dataclass(frozen=True)
class _RuleSet:
    public: Mapping[int, Rule]
    private: Mapping[PrivateKey, Rule]


@dataclass(frozen=True)
class ManufacturerRules:
    """Rules of one ``manufacturers`` entry; ``pattern`` is searched in Manufacturer."""

    pattern: re.Pattern[str]
    rules: _RuleSet
    source: str


class _Walk:
    """State of one :meth:`Profile.deidentify` call."""

    __slots__ = ("context", "identifiers", "rules")

    def __init__(
        self, rules: _RuleSet, context: DeidContext, identifiers: IdentifierPattern | None
    ) -> None:
        self.rules = rules
        self.context = context
        self.identifiers = identifiers


@dataclass(frozen=True, eq=False)
class Profile:
    """A resolved de-identification profile. Build it with :func:`build_profile`.

    Immutable and safe to share between threads; one per project and worker process.
    """

    base: str
    mode: ProfileMode
    options: tuple[ProfileOption, ...]
    rules: _RuleSet
    manufacturers: tuple[ManufacturerRules, ...] = ()
    files: tuple[Path, ...] = ()
    _by_manufacturer: dict[str, _RuleSet] = field(default_factory=dict, repr=False)

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

        def rules(rule_set: _RuleSet) -> list[list[str]]:
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
        rules = self._rules_for(manufacturer or "")
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
            return tag in _FILE_META_WRITTEN
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

    def _candidate_rule_sets(self, manufacturer: str | None) -> list[_RuleSet]:
        if manufacturer is not None:
            return [self._rules_for(manufacturer)]
        return [self.rules, *(self._rules_for_override(m) for m in self.manufacturers)]

    def _rules_for_override(self, override: ManufacturerRules) -> _RuleSet:
        key = f"\x00{override.source}"  # no Manufacturer value holds NUL (LO, PS3.5 6.2)
        cached = self._by_manufacturer.get(key)
        if cached is None:
            cached = self._by_manufacturer[key] = _merge(self.rules, [override.rules])
        return cached

    def _rules_for(self, manufacturer: str) -> _RuleSet:
        if not self.manufacturers:
            return self.rules
        cached = self._by_manufacturer.get(manufacturer)
        if cached is None:
            matching = [m.rules for m in self.manufacturers if m.pattern.search(manufacturer)]
            cached = _merge(self.rules, matching) if matching else self.rules
            self._by_manufacturer[manufacturer] = cached  # a benign race: same value
        return cached

    # --- applying it ---------------------------------------------------------------

    def deidentify(self, ds: Dataset, context: DeidContext) -> Dataset:
        """De-identify ``ds`` in place and return it.

        Patient's Name and Patient ID become ``context.patient_pseudonym``; every instance
        UID becomes ``pseudonymizer.uid(original)``, wherever it occurs (references
        included), so the instances of a study still reference each other after
        de-identification, in every run of the project.
        """
        if self.shifts_dates and not context.date_shift_days:
            raise ValueError(
                "the profile shifts dates but DeidContext.date_shift_days is 0; build the "
                "context with DeidContext.for_patient(pseudonymizer, mrn, pseudonym)"
            )
        manufacturer = str(ds.get("Manufacturer", "") or "") if self.manufacturers else ""
        rules = self._rules_for(manufacturer)
        # Identifiers are collected before anything changes (Patient's Name is blanked
        # early in the walk), and only by profiles that clean something.
        identifiers = IdentifierPattern.from_dataset(ds) if self.cleans else None
        walk = _Walk(rules, context, identifiers)
        self._walk(ds, walk)
        # Patient Module (PS3.3 C.7.1.1): Patient's Name and Patient ID are Type 2; we give
        # the research pseudonym rather than the table's Z so exports link per patient.
        ds.PatientName = context.patient_pseudonym
        ds.PatientID = context.patient_pseudonym
        # SOP Common Module (PS3.3 C.12.1.1.4): record that and how the instance was
        # de-identified; PS3.15 E.1.1 requires Patient Identity Removed = YES.
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.method_description
        codes = []
        for value, scheme, meaning in self.method_codes:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
            codes.append(code)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        if self.shifts_dates:
            # General Image Module (PS3.3 C.7.6.1): dates were shifted, intervals kept.
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        _deidentify_file_meta(ds)
        return ds

    def _walk(self, ds: Dataset, walk: _Walk) -> None:
        """Apply the rules to one dataset (top level or a sequence item), in place."""
        public = walk.rules.public
        creators: dict[int, str] | None = None  # (group << 8 | block) -> creator
        used_blocks: set[int] = set()
        for tag in list(ds.keys()):
            if tag >> 16 & 1:
                if creators is None:
                    creators = _private_creators(ds)
                self._walk_private(ds, tag, walk, creators, used_blocks)
                continue
            rule = public.get(tag)
            if rule is None:
                rule = self._default_rule(ds, tag)
                if rule is None:
                    continue
            self._apply(ds, tag, rule, walk, None)
        if creators:
            tags = list(ds.keys())
            for tag in [t for t in tags if t >> 16 & 1 and 0x10 <= t & 0xFFFF <= 0xFF]:
                if (tag >> 16) << 8 | (tag & 0xFF) not in used_blocks:
                    del ds[tag]  # a Private Creator whose block is now empty

    def _walk_private(
        self, ds: Dataset, tag: int, walk: _Walk, creators: dict[int, str], used: set[int]
    ) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x10 <= element <= 0xFF:
            return  # Private Creator: kept or removed after its block (see _walk)
        block = group << 8 | element >> 8
        creator = creators.get(block) if element > 0xFF else None
        key = PrivateKey(group, creator, element & 0xFF) if creator is not None else None
        rule = walk.rules.private.get(key) if key is not None else None
        if rule is None:
            del ds[tag]  # PS3.15 E.1-1: private attributes X; also no creator, or (gggg,0000)
            return
        self._apply(ds, tag, rule, walk, str(key))
        if tag in ds:
            used.add(block)

    def _default_rule(self, ds: Dataset, tag: int) -> Rule | None:
        """The rule for a public attribute no layer mentions; None means keep as is."""
        if not tag & 0xFFFF:
            return _DEFAULT_REMOVE  # Group Length is retired (PS3.5 7.2) and would be stale
        if self.mode is ProfileMode.ALLOW_LIST:
            return _DEFAULT_REMOVE
        if tag >> 24 in (0x50, 0x60) and action_for(tag) is Action.REMOVE:
            return _DEFAULT_REMOVE  # curve data and overlays (see basic_profile)
        vr = _vr_of(ds, tag)
        if vr == "UI":
            return None if tag in KEEP_UID_TAGS else _DEFAULT_UID
        if vr == "SQ":
            return _DEFAULT_WALK
        if vr == "UN":
            return _DEFAULT_REMOVE  # a public tag no dictionary knows: cannot tell what it holds
        if vr in DATE_VRS and ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            # A date the table does not list, left as is next to shifted ones, would give
            # the patient's offset away.
            return _DEFAULT_SHIFT
        return None

    def _apply(self, ds: Dataset, tag: int, rule: Rule, walk: _Walk, purpose: str | None) -> None:
        """Apply one rule; ``purpose`` names a private attribute for ``hash`` (else keyword)."""
        op = rule.op
        if op is Operation.REMOVE:
            del ds[tag]
            return
        if op is Operation.KEEP:
            if _vr_of(ds, tag) == "SQ":
                self._walk_items(ds[tag], walk)
            return
        elem = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            if op is Operation.BLANK:
                elem.value = Sequence()
            else:  # uid, dummy, clean, shift_date on a sequence: de-identify its items
                self._walk_items(elem, walk)
            return
        if op is Operation.BLANK:
            elem.value = empty_value_for_VR(vr)
        elif op is Operation.UID:
            if vr == "UI":
                _remap_uid_element(elem, walk.context.pseudonymizer)
            else:
                _refuse(ds, tag, rule, vr)
        elif op is Operation.DUMMY:
            _dummy(elem, walk.context.pseudonymizer)
        elif op is Operation.REPLACE:
            elem.value = list(rule.value) if isinstance(rule.value, tuple) else rule.value
        elif op is Operation.HASH:
            if vr in HASHABLE_VRS:
                # The keyword is the namespace, so one accession number hashes alike
                # wherever it occurs, and never like the same text in another attribute.
                namespace = purpose or _hash_purpose(tag)
                hash_text = walk.context.pseudonymizer.hash_text
                elem.value = _map_values(elem.value, lambda v: hash_text(v, namespace))
            else:
                _refuse(ds, tag, rule, vr)
        elif op is Operation.SHIFT_DATE:
            if vr in DATE_VRS:
                elem.value = shift_value(elem.value, vr, walk.context.date_shift_days)
            elif vr != "TM":
                _refuse(ds, tag, rule, vr)
        elif op is Operation.CLEAN:
            if vr in TEXT_VRS and walk.identifiers is not None:
                elem.value = _map_values(elem.value, walk.identifiers.clean)
            else:
                _refuse(ds, tag, rule, vr)

    def _walk_items(self, elem: DataElement, walk: _Walk) -> None:
        for item in elem.value:
            self._walk(item, walk)


def _refuse(ds: Dataset, tag: int, rule: Rule, vr: str) -> None:
    # Only reachable for private attributes (public ones are checked when the file loads):
    # the operation cannot apply to this VR, so the attribute is removed, never kept.
    LOGGER.warning(
        "op %s does not apply to (%04X,%04X) with VR %s; the attribute is removed",
        rule.op.value,
        tag >> 16,
        tag & 0xFFFF,
        vr,
    )
    del ds[tag]


def _map_values(value: object, function) -> object:  # type: ignore[no-untyped-def]
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return function(value)
    return [function(str(v)) if str(v) else "" for v in value]  # type: ignore[attr-defined]


def _new_uid(value: str, pseudonymizer: Pseudonymizer) -> str:
    value = value.strip("\x00 ")
    if not value or value.startswith(STANDARD_UID_ROOT):
        return value  # empty, or a well-known UID from PS3.6 Annex A: identifies nobody
    return pseudonymizer.uid(value)


def _remap_uid_element(elem: DataElement, pseudonymizer: Pseudonymizer) -> None:
    value = elem.value
    if isinstance(value, str):
        elem.value = _new_uid(value, pseudonymizer)
    elif isinstance(value, MultiValue | list):  # e.g. Failed SOP Instance UID List
        elem.value = [_new_uid(v, pseudonymizer) for v in value]


def _dummy(elem: DataElement, pseudonymizer: Pseudonymizer) -> None:
    if elem.VR == "UI":
        _remap_uid_element(elem, pseudonymizer)
        return
    dummy = _DUMMY_BY_VR.get(elem.VR.split(" ")[0])  # "US or SS" -> "US"
    if dummy is None:
        elem.value = empty_value_for_VR(elem.VR)
    elif elem.VM > 1 and not isinstance(dummy, bytes):
        elem.value = [dummy] * elem.VM  # keep the multiplicity the IOD may require
    else:
        elem.value = dummy


def _private_creators(ds: Dataset) -> dict[int, str]:
    """(group << 8 | block) -> Private Creator value, for the private blocks of ``ds``."""
    creators = {}
    for tag in list(ds.keys()):  # iterating a Dataset yields elements; keys() gives tags
        if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
            value = ds[tag].value
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str):
                creators[(tag >> 16) << 8 | (tag & 0xFF)] = value.strip(" \x00")
    return creators


def _deidentify_file_meta(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for tag in list(meta.keys()):
        if tag not in _FILE_META_KEEP:
            del meta[tag]
    if "SOPInstanceUID" in ds:
        # PS3.10 7.1: must equal the SOP Instance UID of the dataset it describes.
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _merge(base: _RuleSet, layers: Iterable[_RuleSet]) -> _RuleSet:
    public = dict(base.public)
    private = dict(base.private)
    for layer in layers:
        public.update(layer.public)
        private.update(layer.private)
    return _RuleSet(MappingProxyType(public), MappingProxyType(private))


@cache
def _basic_table_rules() -> dict[int, Rule]:
    return {
        int(tag): Rule(
            _ACTION_OPERATION[action],
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


def _entry_rules(entries: Iterable[TagEntry], source: str) -> _RuleSet:
    public: dict[int, Rule] = {}
    private: dict[PrivateKey, Rule] = {}
    for index, entry in enumerate(entries):
        target = entry.target()
        rule = entry.rule(f"{source}[{index}]")
        if isinstance(target, PrivateKey):
            private[target] = rule
        else:
            public[target] = rule
    return _RuleSet(public, private)


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
    rules = _RuleSet(MappingProxyType(public), MappingProxyType(private))
    return Profile(
        base=base,
        mode=mode,
        options=chosen,
        rules=rules,
        manufacturers=tuple(manufacturers),
        files=tuple(path for path, _ in parsed),
    )
