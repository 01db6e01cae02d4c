"""The fixed tables the profile engine works from: what a valid instance needs, dummy
values per VR, how Table E.1-1 actions map to operations, and the defaults for attributes
no layer mentions. Plain data, so a reviewer can read what leaves the hospital.
"""

from __future__ import annotations

from pacsflow.deid.basic_profile import Action
from pacsflow.deid.rules import Operation, Rule

# File Meta Information kept (PS3.10 7.1); pydicom regenerates the group length, version
# and implementation fields. Source/sending/receiving AE titles and presentation addresses
# (0002,0016)-(0002,0028) name the hospital's systems; private information (0002,0100)
# and (0002,0102) is vendor data: all dropped.
FILE_META_KEEP = frozenset({0x00020002, 0x00020003, 0x00020010})
FILE_META_WRITTEN = FILE_META_KEEP | {0x00020000, 0x00020001, 0x00020012, 0x00020013}

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
DUMMY_BY_VR: dict[str, object] = {
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

ACTION_OPERATION: dict[Action, Operation] = {
    Action.REMOVE: Operation.REMOVE,
    Action.ZERO: Operation.BLANK,
    Action.DUMMY: Operation.DUMMY,
    Action.KEEP: Operation.KEEP,
    Action.CLEAN: Operation.REMOVE,  # C without Clean Descriptors: removing is always allowed
    Action.UID: Operation.UID,
}

# Rules for attributes no layer mentions (see the module docstring).
DEFAULT_UID = Rule(Operation.UID, source="default: every instance UID is remapped")
DEFAULT_WALK = Rule(Operation.KEEP, source="default: sequences are walked")
DEFAULT_SHIFT = Rule(Operation.SHIFT_DATE, source="default: dates shift with the option")
DEFAULT_REMOVE = Rule(Operation.REMOVE, source="default")
REMOVE_PRIVATE = Rule(Operation.REMOVE, source="PS3.15 E.1-1: private attributes X")
DEFAULT_BLANK_NAME = Rule(Operation.BLANK, source="default: a person name the table omits")
DEFAULT_REMOVE_DATE = Rule(Operation.REMOVE, source="default: a date the table omits")
DEFAULT_CLEAN = Rule(Operation.CLEAN, source="default: free text the table omits is cleaned")
