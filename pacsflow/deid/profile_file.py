"""The profile file format (YAML) and its loader.

A profile file is plain data a project keeps next to its project file::

    mode: profile            # or allow_list: what no entry lists is removed
    tags:
      - {keyword: StudyDescription, op: clean}
      - {tag: "(0018,1030)", op: clean}
      - {keyword: AccessionNumber, op: hash}
      - {keyword: InstitutionName, op: replace, value: "RESEARCH SITE"}
      - {private_creator: "SIEMENS CT VA0  COAD", group: 0x0019, element: 0x92, op: keep}
    manufacturers:           # applied after tags, only to instances whose Manufacturer matches
      - match: "(?i)^philips"
        tags: [{keyword: ProtocolName, op: remove}]
    safe_private:            # kept only when the project enables retain_safe_private
      - {private_creator: "GEMS_PARM_01", group: 0x0043, element: 0x27}

The models validate shape and meaning (known keyword, operation fits the VR) without any
I/O, so a profile can be checked in a test; :func:`load_profile_file` reads the file and
turns every problem into one :class:`ConfigError` naming the file, the entry and the key.
"""

from __future__ import annotations

import difflib
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.datadict import keyword_dict, keyword_for_tag, tag_for_keyword

from pacsflow.deid.dictionary import dictionary_vr
from pacsflow.deid.rules import ACCEPTED_VRS, Operation, PrivateKey, Rule
from pacsflow.errors import ConfigError

Value = str | int | float


class ProfileMode(StrEnum):
    """How attributes that no rule mentions are treated."""

    PROFILE = "profile"  # they follow the base profile (PS3.15 Basic Profile)
    ALLOW_LIST = "allow_list"  # they are removed, as PIXL does


ENGINE_TAGS: frozenset[int] = frozenset(
    {
        0x00100010,  # Patient's Name: the patient pseudonym (Patient Module, Type 2)
        0x00100020,  # Patient ID: the patient pseudonym
        0x00120062,  # Patient Identity Removed (SOP Common, PS3.3 C.12.1.1.4)
        0x00120063,  # De-identification Method
        0x00120064,  # De-identification Method Code Sequence
        0x00280303,  # Longitudinal Temporal Information Modified (PS3.3 C.7.6.1)
    }
)
"""Attributes that pacsflow itself sets on every de-identified instance; no file may rule
on them, because their value is what records how the instance was de-identified."""

_TAG_TEXT = re.compile(r"^\(?\s*(?:0x)?([0-9A-Fa-f]{4})\s*,?\s*(?:0x)?([0-9A-Fa-f]{4})\s*\)?$")


def parse_tag(text: str) -> int:
    """Parse "(0018,1030)", "0018,1030" or "00181030" into an int tag."""
    match = _TAG_TEXT.match(text.strip())
    if not match:
        raise ValueError(f'tag {text!r} is not of the form "(gggg,eeee)", e.g. "(0018,1030)"')
    return int(match[1], 16) << 16 | int(match[2], 16)


def _int_or_hex(value: object) -> object:
    # YAML 1.1 reads 0x0019 as an int already; accept "0x0019" and "0019" strings too.
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return int(text, 16)
        except ValueError:
            return value
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TagEntry(_Frozen):
    """One rule: an attribute (by keyword, tag, or private creator) and an operation."""

    keyword: str | None = Field(default=None, description="DICOM keyword, e.g. StudyDescription.")
    tag: str | None = Field(default=None, description='Public tag, e.g. "(0018,1030)".')
    private_creator: str | None = Field(
        default=None, description="Private Creator of the block (PS3.5 7.8.1)."
    )
    group: int | None = Field(default=None, description="Odd group of a private attribute.")
    element: int | None = Field(
        default=None, description="Element within the private block: 0x00-0xFF (or 0xXXee)."
    )
    op: Operation = Field(description="What to do with the attribute.")
    value: Value | list[Value] | None = Field(default=None, description="For op: replace.")

    _group_hex = field_validator("group", "element", mode="before")(
        classmethod(lambda cls, v: _int_or_hex(v))
    )

    @model_validator(mode="after")
    def _check(self) -> TagEntry:
        private = self.private_creator is not None or self.group is not None
        given = [name for name in ("keyword", "tag") if getattr(self, name) is not None]
        if private:
            given.append("private_creator")
        if len(given) != 1:
            raise ValueError(
                "give exactly one of keyword, tag, or private_creator with group and element"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if private:
            self._check_private()
        else:
            self._check_public()
        if self.op is Operation.REPLACE and self.value is None:
            raise ValueError('op replace needs a value, e.g. value: "RESEARCH SITE"')
        if self.op is not Operation.REPLACE and self.value is not None:
            raise ValueError(f"value is only used with op replace, not with op {self.op.value}")
        return self

    def _check_private(self) -> None:
        if not self.private_creator or not self.private_creator.strip():
            raise ValueError('private_creator must name the creator, e.g. "SIEMENS CSA HEADER"')
        if self.group is None or self.element is None:
            raise ValueError("a private attribute needs private_creator, group and element")
        if not 0x0009 <= self.group <= 0xFFFF or not self.group & 1:
            raise ValueError(
                f"group 0x{self.group:04X} is not a private group; private groups are odd "
                "(PS3.5 7.8), e.g. 0x0019"
            )
        if not (0 <= self.element <= 0xFF or 0x1000 <= self.element <= 0xFFFF):
            raise ValueError(
                f"element 0x{self.element:X} is not an element of a private block; give the "
                "low byte, e.g. 0x92 for (0019,xx92)"
            )

    def _check_public(self) -> None:
        tag = self.public_tag()
        if tag >> 16 & 1:
            raise ValueError(
                f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) is private; address private "
                "attributes with private_creator, group and element"
            )
        if tag in ENGINE_TAGS:
            raise ValueError(
                f"{keyword_for_tag(tag)} is set by pacsflow on every instance (the patient "
                "pseudonym or the de-identification record); remove this entry"
            )
        vr = dictionary_vr(tag)
        accepted = ACCEPTED_VRS[self.op]
        if vr != "UN" and accepted is not None and not set(vr.split(" or ")) & accepted:
            raise ValueError(
                f"op {self.op.value} does not apply to {self.label()} (VR {vr}); it applies "
                f"to VRs {', '.join(sorted(accepted))}"
            )
        if self.op is Operation.REPLACE and vr == "SQ":
            raise ValueError(f"op replace cannot set a sequence ({self.label()}); use blank")

    def public_tag(self) -> int:
        """The public tag this entry addresses (for a keyword or tag entry)."""
        if self.keyword is not None:
            tag = tag_for_keyword(self.keyword)
            if tag is None:
                close = difflib.get_close_matches(self.keyword, keyword_dict, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown DICOM keyword {self.keyword!r}{hint}")
            return tag
        assert self.tag is not None
        return parse_tag(self.tag)

    def target(self) -> int | PrivateKey:
        """The attribute addressed: a public tag, or a :class:`PrivateKey`."""
        if self.private_creator is not None:
            assert self.group is not None and self.element is not None
            return PrivateKey(self.group, self.private_creator.strip(), self.element & 0xFF)
        return self.public_tag()

    def label(self) -> str:
        if self.keyword:
            return self.keyword
        if self.tag:
            return self.tag
        element = (self.element or 0) & 0xFF
        return f"({self.group or 0:04X},xx{element:02X}) of {self.private_creator!r}"

    def rule(self, source: str) -> Rule:
        value = tuple(self.value) if isinstance(self.value, list) else self.value
        return Rule(self.op, value, source)


class SafePrivateEntry(TagEntry):
    """A private attribute that the Retain Safe Private option keeps (PS3.15 E.3.10)."""

    op: Operation = Operation.KEEP

    @model_validator(mode="after")
    def _private_only(self) -> SafePrivateEntry:
        if self.private_creator is None:
            raise ValueError("safe_private lists private attributes only (private_creator, ...)")
        return self


class ManufacturerOverride(_Frozen):
    """Rules applied only to instances whose Manufacturer (0008,0070) matches ``match``."""

    match: str = Field(description="Python regular expression, searched in Manufacturer.")
    tags: list[TagEntry] = Field(min_length=1)

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"match {value!r} is not a valid regular expression: {exc}") from None
        return value


class ProfileFile(_Frozen):
    """One profile file, as written; :func:`pacsflow.deid.profile.build_profile` layers them."""

    description: str = Field(default="", description="What the profile is for, for people.")
    mode: ProfileMode | None = Field(
        default=None, description="profile (default) or allow_list; unset inherits."
    )
    tags: list[TagEntry] = Field(default_factory=list)
    manufacturers: list[ManufacturerOverride] = Field(default_factory=list)
    safe_private: list[SafePrivateEntry] = Field(default_factory=list)


def _location(data: Any, loc: tuple[Any, ...]) -> str:
    """``tags[2] (StudyDescription).op``: the path to the key, naming each entry on the way."""
    text = ""
    node = data
    for part in loc:
        if isinstance(part, str) and part.startswith(("function-", "int", "str", "float", "list")):
            continue  # pydantic's name for a union member, not a key of the file
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(part, int) and isinstance(node, dict):
            for key in ("keyword", "tag", "private_creator", "match"):
                if isinstance(node.get(key), str):
                    text += f" ({node[key]})"
                    break
    return text or "(top level)"


def describe_errors(error: ValidationError, path: Path, data: Any) -> str:
    lines = [f"{path}: invalid profile file"]
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  - {_location(data, loc)}: {message}")
    lines.append("Fix these entries and run again.")
    return "\n".join(lines)


def parse_profile_file(data: Any, path: Path) -> ProfileFile:
    """Validate already-loaded YAML data; ``path`` only names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with tags, manufacturers, safe_private")
    try:
        return ProfileFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, path, data)) from None


def load_profile_file(path: str | Path) -> ProfileFile:
    """Read and validate one profile file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such profile file. Check profile_files in the project file; "
            "relative paths are relative to the project file."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_profile_file(data if data is not None else {}, path)
