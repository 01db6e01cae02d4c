"""Walking a de-identified dataset: every value searched, every attribute asked about.

What is searched: the values of every string VR (each value of a multi-valued element),
and the bytes of OB, OW and UN elements (text-like bytes, as private strings read as UN
are, get the text rules). Pixel, overlay, waveform and spectroscopy data are never read
here: they are images and signals (the pixel inspection looks at them), and decoding
them would cost more than the whole rest of the check. Numeric VRs hold numbers.

What is not searched: a value the engine wrote itself (``skip``: the pseudonym, the
de-identification method, dummy and replacement values). A patient named "Profile" or
"Site" is not found in "pacsflow basic profile" or "RESEARCH SITE".
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import lru_cache

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from pacsflow.deid.dictionary import dictionary_vr
from pacsflow.deid.phi_gate.elements import (
    BINARY_VRS,
    BULK_TAGS,
    CHARSET_VRS,
    OVERLAY_DATA,
    OVERLAY_DATA_MASK,
    TEXT_VRS,
    value_strings,
)
from pacsflow.deid.phi_gate.identifiers import OriginalIdentifiers
from pacsflow.deid.phi_gate.matching import Context, Matcher, matcher_for
from pacsflow.deid.rules import is_free_text_keyword

Allows = Callable[[BaseTag, str | None], bool]
"""The profile's verdict on an element: ``allows(tag, private_creator)``."""

_CONTEXT_BY_VR = {
    "PN": Context.TEXT,
    "LT": Context.TEXT,
    "ST": Context.TEXT,
    "UT": Context.TEXT,
    "UC": Context.TEXT,
    "CS": Context.CODE,
    "AE": Context.CODE,
    "AS": Context.CODE,
    "UR": Context.CODE,
}


@lru_cache(maxsize=8192)
def context_of(tag: int, vr: str) -> Context:
    """What kind of value an element holds (see :class:`Context`).

    LO and SH are free text when their keyword says so (descriptions, comments, reasons)
    or when they are private (vendors put anything there), and coded otherwise (Convolution
    Kernel, Code Meaning, Manufacturer): there a surname equal to a kernel or body part
    name is a defined term.
    """
    context = _CONTEXT_BY_VR.get(vr)
    if context is not None:
        return context
    if vr in ("LO", "SH"):
        if is_free_text_keyword(tag):
            return Context.TEXT
        return Context.CODE
    if vr in ("DA", "DT", "TM", "DS", "IS", "UI"):
        return Context.NUMBER
    return Context.TEXT  # UN and anything unexpected: the strictest reading


def _is_private_creator(tag: int) -> bool:
    return bool(tag >> 16 & 1) and 0x0010 <= tag & 0xFFFF <= 0x00FF  # PS3.5 7.8.1


def _private_creator(ds: Dataset, tag: int) -> str | None:
    """Value of the element reserving ``tag``'s block (PS3.5 7.8.1), if present."""
    element = tag & 0xFFFF
    if element < 0x1000:
        return None
    return _text_value(ds, (tag & 0xFFFF0000) | (element >> 8))


def _text_value(ds: Dataset, tag: int) -> str | None:
    if tag not in ds:
        return None
    value = ds[tag].value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip("\x00 ") if value is not None else None


@lru_cache(maxsize=4096)
def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _label(ds: Dataset, tag: int, matcher: Matcher) -> str:
    """Path component for ``tag``: its keyword, or for private data its creator."""
    if not tag >> 16 & 1:
        return _keyword(tag)
    label = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    creator = _private_creator(ds, tag)
    if creator is None:
        return label
    # The creator is shown, as it tells whose private data survived; unless it holds an
    # identifier itself, since paths must never carry values.
    shown = "<redacted>" if matcher.leaks(creator) else repr(creator[:64])
    return f"{label} [private creator {shown}]"


def _codec(ds: Dataset) -> str | None:
    """Python codec of ``ds``'s raw text when it is a single one, else None.

    Several codecs (ISO 2022 code extensions, PS3.5 6.1.2.5) switch by escape sequences
    inside values; only pydicom's decoder handles those.
    """
    charset = ds.original_character_set
    if isinstance(charset, str):
        return charset or "latin_1"
    if len(charset) == 1:
        return charset[0]
    return None


def _raw_text(elem: RawDataElement, vr: str, ds: Dataset) -> str | None:
    """The text of a raw (undecoded) string element, or None to let pydicom decode it.

    Decoding here rather than through pydicom is several times faster and leaves the
    element raw, so it is written back byte for byte. The raw value of a multi-valued
    element is its values joined by backslashes, which is what the matchers search.
    """
    if vr not in CHARSET_VRS:
        return elem.value.decode("latin-1")  # default repertoire only (PS3.5 6.1.2.3)
    codec = _codec(ds)
    if codec is None:
        return None
    try:
        return elem.value.decode(codec, errors="replace")
    except LookupError:  # a codec name Python lacks: pydicom decides what to do
        return None


def _look(tag: int, stored_vr: str | None) -> tuple[str, Context] | None:
    """How the walk reads an element with this tag and stored VR: the VR it is read as
    and the context of its text, or None when it is not read (bulk data, numbers)."""
    if tag in BULK_TAGS or tag & OVERLAY_DATA_MASK == OVERLAY_DATA:
        return None
    vr = stored_vr
    if vr is None or vr == "UN":  # implicit VR, or unknown to the writer
        vr = dictionary_vr(tag)  # still "UN" for private tags: pydicom decides below
    if vr not in TEXT_VRS and vr not in BINARY_VRS and vr != "SQ":
        return None  # numbers, not text (or an ambiguous "US or SS")
    return vr, context_of(tag, vr)


_LOOKS: dict[tuple[int, str | None], tuple[str, Context] | None] = {}
""":func:`_look` per (tag, stored VR): the same for every instance, asked of each element."""
_LOOKS_LIMIT = 65536  # private tags are many; a cache that only grows would leak
_UNSEEN = object()


def _walk(
    ds: Dataset,
    prefix: str,
    matcher: Matcher,
    allows: Allows | None,
    skip: Collection[str],
    out: list[str],
) -> None:
    stored = ds._dict  # elements as stored: get_item's checks cost more than the lookup
    for tag in sorted(stored, key=int):  # int: BaseTag compares in Python, int in C
        t = int(tag)
        refused = False
        if allows is not None:
            if not t >> 16 & 1:
                creator = None
            elif 0x0010 <= t & 0xFFFF <= 0x00FF:  # a Private Creator (_is_private_creator):
                creator = _text_value(ds, t)  # asked with the creator it reserves, its value
            else:
                creator = _private_creator(ds, t)
            refused = not allows(tag, creator)
            if refused:
                out.append(prefix + _label(ds, t, matcher))
        elem = stored[tag]
        key = (t, elem.VR)
        look = _LOOKS.get(key, _UNSEEN)
        if look is _UNSEEN:
            look = _LOOKS[key] = _look(t, elem.VR)
            if len(_LOOKS) > _LOOKS_LIMIT:
                _LOOKS.clear()
        if look is None:
            continue  # bulk data, or numbers
        vr, context = look
        leaked = False
        if isinstance(elem, RawDataElement) and elem.value is not None and vr in TEXT_VRS:
            text = _raw_text(elem, vr, ds)
            if text is not None:
                text = text.strip("\x00 ")
                searched = bool(text) and text not in skip and not refused
                if searched and matcher.leaks(text, context):
                    out.append(prefix + _label(ds, t, matcher))
                continue
        if isinstance(elem, RawDataElement) and elem.value is not None and vr in ("OB", "OW"):
            leaked = matcher.bytes_leak(elem.value)
        else:
            if not isinstance(elem, DataElement):
                elem = ds[tag]  # pydicom decodes (and keeps) sequences, UN, ISO 2022 text
            value = elem.value
            vr = elem.VR
            if vr == "SQ":
                path = prefix + _label(ds, t, matcher)
                # Inside a refused sequence all is refused already: only search values.
                inner = None if refused else allows
                for index, item in enumerate(value or ()):
                    _walk(item, f"{path}[{index}].", matcher, inner, skip, out)
                continue
            if isinstance(value, bytes):
                leaked = matcher.bytes_leak(value)
            elif vr in TEXT_VRS or vr in BINARY_VRS:
                text = "\\".join(value_strings(value)).strip("\x00 ")
                leaked = bool(text) and text not in skip and matcher.leaks(text, context_of(t, vr))
        if leaked and not refused:
            out.append(prefix + _label(ds, t, matcher))


def find_leaks(
    ds: Dataset,
    ids: OriginalIdentifiers | Matcher,
    allows: Allows | None = None,
    skip: Collection[str] = frozenset(),
) -> list[str]:
    """Attribute paths of ``ds`` (de-identified) that still hold an original identifier.

    With ``allows``, also the paths of elements the profile does not allow: it is asked
    about every element at every depth, File Meta Information included, with the
    private creator of a private element's block (for a Private Creator element, its own
    value, PS3.5 7.8.1). Elements inside a refused sequence are not asked about again.

    Each path appears once, in dataset order, File Meta Information first (prefixed
    ``file_meta.``). Paths are keywords (or ``(gggg,eeee)``), ``[i]`` for sequence items
    and, for private data elements, the private creator: never a value.

    ``ids`` may be the study's compiled :class:`Matcher`, which the per-study loop builds
    once; ``skip`` holds the values the engine wrote (never searched).
    """
    matcher = ids if isinstance(ids, Matcher) else matcher_for(ids)
    out: list[str] = []
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _walk(meta, "file_meta.", matcher, allows, skip, out)
    _walk(ds, "", matcher, allows, skip, out)
    return list(dict.fromkeys(out))
