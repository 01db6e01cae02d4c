"""The profile engine: apply a resolved :class:`Profile` to one dataset, in place.

Why in place and lazily: this runs on every retrieved instance. pydicom keeps elements
as undecoded raw bytes until they are accessed and writes untouched raw elements back
verbatim, so only what a rule changes is decoded; pixel data and every other kept
attribute are never decoded or copied, and stay byte-identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from pacsflow.config import ProfileOption
from pacsflow.deid.basic_profile import KEEP_UID_TAGS, STANDARD_UID_ROOT, Action, action_for
from pacsflow.deid.clean import Cleaner, IdentifierPattern
from pacsflow.deid.dates import shift_value
from pacsflow.deid.dictionary import dictionary_vr
from pacsflow.deid.options import MAX_RETAINED_AGE_YEARS
from pacsflow.deid.phi_gate.identifiers import OriginalIdentifiers
from pacsflow.deid.profile.resolved import Profile, RuleSet
from pacsflow.deid.profile.tables import (
    DEFAULT_BLANK_NAME,
    DEFAULT_CLEAN,
    DEFAULT_REMOVE,
    DEFAULT_REMOVE_DATE,
    DEFAULT_SHIFT,
    DEFAULT_UID,
    DEFAULT_WALK,
    DUMMY_BY_VR,
    FILE_META_KEEP,
)
from pacsflow.deid.profile_file import ProfileMode
from pacsflow.deid.pseudonyms import Pseudonymizer
from pacsflow.deid.rules import (
    DATE_VRS,
    FREE_TEXT_VRS,
    HASHABLE_VRS,
    TEXT_VRS,
    Operation,
    PrivateKey,
    Rule,
    is_free_text_keyword,
)

LOGGER = logging.getLogger(__name__)


# The attributes every instance is given (as tags: see set_value).
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_PATIENT_IDENTITY_REMOVED = 0x00120062
_DEIDENTIFICATION_METHOD = 0x00120063
_DEIDENTIFICATION_METHOD_CODE_SEQUENCE = 0x00120064
_CODE_VALUE = 0x00080100
_CODING_SCHEME_DESIGNATOR = 0x00080102
_CODE_MEANING = 0x00080104
_LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = 0x00280303
_SOP_INSTANCE_UID = 0x00080018
_MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003


@lru_cache(maxsize=4096)
def _hash_purpose(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


def _vr_of(ds: Dataset, tag: int) -> str:
    """VR of an element without decoding its value (implicit VR files store none)."""
    vr = ds.get_item(tag, keep_deferred=True).VR  # a deferred value stays in its file
    if vr is None or vr == "UN":
        # Implicit VR, or explicit UN written by a system that did not know the tag:
        # pydicom decodes it with the dictionary VR (config replace_un_with_known_vr).
        return dictionary_vr(tag)
    return vr


@dataclass(frozen=True)
class DeidContext:
    """What de-identifying one patient's instance needs beyond the profile.

    ``date_shift_days`` is the patient's offset (:meth:`Pseudonymizer.date_shift_days`);
    it must be non-zero when the profile shifts dates. ``identifiers`` are the whole
    study's (:func:`pacsflow.deid.study.deidentify_study` gathers them), which ``clean``
    removes; without them an instance is cleaned of its own identifiers only. The key is
    excluded from ``repr`` by :class:`Pseudonymizer` itself.
    """

    pseudonymizer: Pseudonymizer
    patient_pseudonym: str
    date_shift_days: int = 0
    identifiers: OriginalIdentifiers | None = field(default=None, repr=False)

    @classmethod
    def for_patient(
        cls, pseudonymizer: Pseudonymizer, patient_key: str, patient_pseudonym: str
    ) -> DeidContext:
        """Context for one patient: ``patient_key`` (MRN or PatientID) keys the date shift."""
        return cls(pseudonymizer, patient_pseudonym, pseudonymizer.date_shift_days(patient_key))


def deidentify(profile: Profile, ds: Dataset, context: DeidContext) -> Dataset:
    """De-identify ``ds`` in place and return it.

    Patient's Name and Patient ID become ``context.patient_pseudonym``; every instance
    UID becomes ``pseudonymizer.uid(original)``, wherever it occurs (references
    included), so the instances of a study still reference each other after
    de-identification, in every run of the project.
    """
    if profile.shifts_dates and not context.date_shift_days:
        raise ValueError(
            "the profile shifts dates but DeidContext.date_shift_days is 0; build the "
            "context with DeidContext.for_patient(pseudonymizer, mrn, pseudonym)"
        )
    manufacturer = str(ds.get("Manufacturer", "") or "") if profile.manufacturers else ""
    rules = profile.rules_for_manufacturer(manufacturer)
    # Identifiers are collected before anything changes (Patient's Name is blanked
    # early in the walk), and only by profiles that clean something.
    cleaner: Cleaner | None = None
    if profile.cleans:
        if context.identifiers is not None:
            cleaner = Cleaner.for_study(context.identifiers)
        else:
            cleaner = IdentifierPattern.from_dataset(ds)
    _Engine(profile, rules, context, cleaner).walk(ds)
    if ProfileOption.RETAIN_PATIENT_CHARACTERISTICS in profile.options:
        _cap_age(ds)
    # Patient Module (PS3.3 C.7.1.1): Patient's Name and Patient ID are Type 2; we give
    # the research pseudonym rather than the table's Z so exports link per patient.
    set_value(ds, _PATIENT_NAME, context.patient_pseudonym)
    set_value(ds, _PATIENT_ID, context.patient_pseudonym)
    # SOP Common Module (PS3.3 C.12.1.1.4): record that and how the instance was
    # de-identified; PS3.15 E.1.1 requires Patient Identity Removed = YES.
    set_value(ds, _PATIENT_IDENTITY_REMOVED, "YES")
    set_value(ds, _DEIDENTIFICATION_METHOD, profile.method_description)
    codes = []
    for value, scheme, meaning in profile.method_codes:
        code = Dataset()
        set_value(code, _CODE_VALUE, value)
        set_value(code, _CODING_SCHEME_DESIGNATOR, scheme)
        set_value(code, _CODE_MEANING, meaning)
        codes.append(code)
    set_value(ds, _DEIDENTIFICATION_METHOD_CODE_SEQUENCE, Sequence(codes))
    if profile.shifts_dates:
        # General Image Module (PS3.3 C.7.6.1): dates were shifted, intervals kept.
        set_value(ds, _LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "MODIFIED")
    _deidentify_file_meta(ds)
    return ds


def unlisted_rule(tag: int, vr: str) -> Rule | None:
    """Safe default for a public attribute Table E.1-1 does not list; None keeps it.

    PS3.15 E.1.1 asks for all identifying information to go, not only the table's rows,
    and new attributes appear in every release: a person's name (a secondary reviewer)
    is blanked, a date removed, free text (SR Text Value, a document title, comments)
    cleaned. Coded and technical values (CS, numbers, Convolution Kernel) stay.
    """
    if vr == "PN":
        return DEFAULT_BLANK_NAME
    if vr in DATE_VRS:
        return DEFAULT_REMOVE_DATE
    if vr in FREE_TEXT_VRS or (vr in ("LO", "SH") and is_free_text_keyword(tag)):
        return DEFAULT_CLEAN
    return None


def _cap_age(ds: Dataset) -> None:
    """Patient's Age over 89 years becomes 090Y, "90 or older" (HIPAA Safe Harbor)."""
    age = str(ds.get("PatientAge", "") or "").strip()
    if len(age) != 4 or not age[:3].isdigit():
        return
    days_per_unit = {"D": 1, "W": 7, "M": 30.4375, "Y": 365.25}.get(age[3].upper())
    if days_per_unit is not None and int(age[:3]) * days_per_unit / 365.25 > MAX_RETAINED_AGE_YEARS:
        ds.PatientAge = "090Y"


class _Engine:
    """State of one :func:`deidentify` call: the rules chosen for the instance, and the
    context and identifiers every rule may need."""

    __slots__ = ("context", "identifiers", "profile", "rules")

    def __init__(
        self,
        profile: Profile,
        rules: RuleSet,
        context: DeidContext,
        identifiers: Cleaner | None,
    ) -> None:
        self.profile = profile
        self.rules = rules
        self.context = context
        self.identifiers = identifiers

    def walk(self, ds: Dataset) -> None:
        """Apply the rules to one dataset (top level or a sequence item), in place."""
        public = self.rules.public
        creators: dict[int, str] | None = None  # (group << 8 | block) -> creator
        used_blocks: set[int] = set()
        defaults = self.profile._default_rules
        # The elements as stored (raw or decoded), so that the VR a rule depends on is
        # read without a lookup per tag; a copy, since rules remove and replace elements.
        for tag, elem in list(ds._dict.items()):
            if tag >> 16 & 1:
                if creators is None:
                    creators = _private_creators(ds)
                self.walk_private(ds, tag, creators, used_blocks)
                continue
            # Looked up as an int: a BaseTag key compares with the table's ints in Python.
            t = int(tag)
            rule = public.get(t)
            if rule is None:
                # The default depends on the tag and its VR only: decided once per profile.
                key = (t, elem.VR)
                if key in defaults:
                    rule = defaults[key]
                else:
                    rule = defaults[key] = self.default_rule(ds, tag)
                if rule is None:
                    continue
            self.apply(ds, tag, rule, None)
        if creators:
            tags = list(ds.keys())
            for tag in [t for t in tags if t >> 16 & 1 and 0x10 <= t & 0xFFFF <= 0xFF]:
                if (tag >> 16) << 8 | (tag & 0xFF) not in used_blocks:
                    del ds[tag]  # a Private Creator whose block is now empty

    def walk_private(self, ds: Dataset, tag: int, creators: dict[int, str], used: set[int]) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x10 <= element <= 0xFF:
            return  # Private Creator: kept or removed after its block (see _walk)
        block = group << 8 | element >> 8
        creator = creators.get(block) if element > 0xFF else None
        key = PrivateKey(group, creator, element & 0xFF) if creator is not None else None
        rule = self.rules.private.get(key) if key is not None else None
        if rule is None:
            del ds[tag]  # PS3.15 E.1-1: private attributes X; also no creator, or (gggg,0000)
            return
        self.apply(ds, tag, rule, str(key))
        if tag in ds:
            used.add(block)

    def default_rule(self, ds: Dataset, tag: int) -> Rule | None:
        """The rule for a public attribute no layer mentions; None means keep as is."""
        if not tag & 0xFFFF:
            return DEFAULT_REMOVE  # Group Length is retired (PS3.5 7.2) and would be stale
        if self.profile.mode is ProfileMode.ALLOW_LIST:
            return DEFAULT_REMOVE
        if tag >> 24 in (0x50, 0x60) and action_for(tag) is Action.REMOVE:
            return DEFAULT_REMOVE  # curve data and overlays (see basic_profile)
        vr = _vr_of(ds, tag)
        if vr == "UI":
            if tag in KEEP_UID_TAGS or ProfileOption.RETAIN_UIDS in self.profile.options:
                return None
            return DEFAULT_UID
        if vr == "SQ":
            return DEFAULT_WALK
        if vr == "UN":
            return DEFAULT_REMOVE  # a public tag no dictionary knows: cannot tell what it holds
        if (
            vr in DATE_VRS
            and ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.profile.options
        ):
            # A date the table does not list, left as is next to shifted ones, would give
            # the patient's offset away.
            return DEFAULT_SHIFT
        return unlisted_rule(tag, vr)

    def apply(self, ds: Dataset, tag: int, rule: Rule, purpose: str | None) -> None:
        """Apply one rule; ``purpose`` names a private attribute for ``hash`` (else keyword)."""
        op = rule.op
        if op is Operation.REMOVE:
            del ds[tag]
            return
        if op is Operation.KEEP:
            if _vr_of(ds, tag) == "SQ":
                self.walk_items(ds[tag])
            return
        if (op is Operation.BLANK or op is Operation.UID or op is Operation.DUMMY) and _replace_raw(
            ds, tag, rule, self
        ):
            return
        elem = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            if op is Operation.BLANK:
                elem.value = Sequence()
            else:  # uid, dummy, clean, shift_date on a sequence: de-identify its items
                self.walk_items(elem)
            return
        if op is Operation.BLANK:
            elem.value = empty_value_for_VR(vr)
        elif op is Operation.UID:
            if vr == "UI":
                _remap_uid_element(elem, self.context.pseudonymizer)
            else:
                _refuse(ds, tag, rule, vr)
        elif op is Operation.DUMMY:
            _dummy(elem, self.context.pseudonymizer)
        elif op is Operation.REPLACE:
            elem.value = list(rule.value) if isinstance(rule.value, tuple) else rule.value
        elif op is Operation.HASH:
            if vr in HASHABLE_VRS:
                # The keyword is the namespace, so one accession number hashes alike
                # wherever it occurs, and never like the same text in another attribute.
                namespace = purpose or _hash_purpose(tag)
                hash_text = self.context.pseudonymizer.hash_text
                elem.value = _map_values(elem.value, lambda v: hash_text(v, namespace))
            else:
                _refuse(ds, tag, rule, vr)
        elif op is Operation.SHIFT_DATE:
            if vr in DATE_VRS:
                elem.value = shift_value(elem.value, vr, self.context.date_shift_days)
            elif vr != "TM":
                _refuse(ds, tag, rule, vr)
        elif op is Operation.CLEAN:
            if vr in TEXT_VRS and self.identifiers is not None:
                elem.value = _map_values(elem.value, self.identifiers.clean)
            else:
                _refuse(ds, tag, rule, vr)

    def walk_items(self, elem: DataElement) -> None:
        for item in elem.value:
            self.walk(item)


# String VRs whose raw value pydicom decodes without changing the element's VR, and that
# are never multi-byte (UI) or cannot fail to decode (no number to parse): blanking or
# remapping one needs neither its decoded value nor pydicom's conversion.
_PLAIN_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)


def _plain_raw(ds: Dataset, tag: int) -> tuple[RawDataElement, str] | None:
    """The raw element at public ``tag`` and the VR pydicom would decode it with, when
    that VR is a plain string VR and the value is in memory; None otherwise.

    Why: ``ds[tag]`` converts the element (decoding, validation, a new DataElement),
    which for a value about to be blanked or replaced is work thrown away. Explicit VR
    UN is left to pydicom (it looks the VR up and may keep UN).
    """
    elem = ds._dict.get(tag)
    if not isinstance(elem, RawDataElement) or elem.value is None or tag >> 16 & 1:
        return None
    vr = elem.VR
    if vr is None:  # implicit VR: pydicom takes the dictionary's
        vr = dictionary_vr(tag)
    if vr not in _PLAIN_STRING_VRS or elem.length == 0xFFFFFFFF:
        return None
    return elem, vr


def _replace_raw(ds: Dataset, tag: int, rule: Rule, engine: _Engine) -> bool:
    """Apply ``blank``, ``uid`` or ``dummy`` to a raw plain string element without
    decoding it; False when the element needs pydicom's own conversion first.

    The result is what decoding and then setting the value gives, byte for byte once
    written: a blanked element is an empty raw one (as pydicom reads an empty element;
    written with its own VR and length 0); a remapped UID or a dummy is a new element
    holding the new value, as setting the value of the decoded element makes it.
    """
    found = _plain_raw(ds, tag)
    if found is None:
        return False
    raw, vr = found
    op = rule.op
    if op is Operation.BLANK:
        ds._dict[tag] = raw._replace(length=0, value=b"")
        return True
    if vr == "UI":  # uid, and dummy too (_dummy remaps a UID)
        text = raw.value.decode("latin-1").rstrip("\0 ")  # as pydicom's convert_UI
        if "\\" in text:
            return False  # several UIDs: the decoded path maps each
        _store(ds, DataElement(tag, vr, _new_uid(text, engine.context.pseudonymizer)))
        return True
    if op is Operation.DUMMY and b"\\" not in raw.value:
        # No backslash byte: one value at most (no character set encodes "\\" otherwise),
        # so _dummy would set the single dummy of the VR (every plain VR has one).
        _store(ds, DataElement(tag, vr, DUMMY_BY_VR[vr]))
        return True
    return False  # uid on another VR (_refuse decides), or a dummy for several values


def _store(ds: Dataset, elem: DataElement) -> None:
    """``ds[elem.tag] = elem``, straight into the dataset's dict when that is all that
    assignment does: a public, non-sequence element of a Dataset (not File Meta, whose
    assignment checks the group). Why: the engine stores a few new elements in every
    instance, and the checks of ``Dataset.__setitem__`` cost as much as building one."""
    if elem.VR == "SQ" or elem.tag >> 16 & 1 or isinstance(ds, FileMetaDataset):
        ds[elem.tag] = elem
    else:
        ds._dict[elem.tag] = elem


def set_value(ds: Dataset, tag: int, value: object) -> None:
    """``ds.<keyword> = value``, as :meth:`Dataset.__setattr__` does it, for a tag.

    Why: the engine sets the same few attributes on every instance; setattr looks the
    keyword up, and it decodes an element (Patient's Name, blanked raw a moment before)
    only to replace its value. A raw plain string element is replaced by a new element
    of the VR pydicom would have decoded it with, which is the same element.
    """
    found = _plain_raw(ds, tag)
    if found is not None:
        _store(ds, DataElement(tag, found[1], value))
    elif tag in ds._dict:
        elem = ds[tag]
        elem.value = value
        ds[tag] = elem  # as setattr does: a sequence is tied to its parent again
    else:
        _store(ds, DataElement(tag, dictionary_vr(tag), value))


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
    dummy = DUMMY_BY_VR.get(elem.VR.split(" ")[0])  # "US or SS" -> "US"
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
        if tag not in FILE_META_KEEP:
            del meta[tag]
    if _SOP_INSTANCE_UID in ds._dict:
        # PS3.10 7.1: must equal the SOP Instance UID of the dataset it describes.
        set_value(meta, _MEDIA_STORAGE_SOP_INSTANCE_UID, ds[_SOP_INSTANCE_UID].value)
