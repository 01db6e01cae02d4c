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

One concept per module: :mod:`.tables` (the fixed data), :mod:`.resolved` (the
:class:`Profile` and the questions asked of it), :mod:`.engine` (applying it to a
dataset) and :mod:`.builder` (layering a project's base, options and files).
"""

from pacsflow.deid.profile.builder import PROFILE_NAMES, build_profile, check_profile
from pacsflow.deid.profile.engine import DeidContext
from pacsflow.deid.profile.resolved import ManufacturerRules, Profile

__all__ = [
    "PROFILE_NAMES",
    "DeidContext",
    "ManufacturerRules",
    "Profile",
    "build_profile",
    "check_profile",
]
