"""The PS3.15 Annex E profile options, as rules layered on the Basic Profile.

Why a transcription and not a library: dicom-anonymizer ships only the Basic Profile
column of Table E.1-1. The option columns are short, so the rows below are transcribed
from PS3.15 Table E.1-1 ("Rtn. Pat. Chars. Opt.", "Rtn. Dev. Id. Opt.", "Rtn. Inst. Id.
Opt.", "Clean Desc. Opt.", "Clean Struct. Cont. Opt.", "Clean Graph. Opt.") by attribute
keyword, or as ``(gggg,eeee)`` for rows newer than pydicom's dictionary. The columns were
last checked row by row against the 2025 edition (idiscore's scrape of the standard,
2025-06-24), which added calibration dates and AE titles to Retain Device Identity and
some twenty rows to Clean Descriptors that an older copy lacked; the tests check that
every row is a row of the table the base is pinned to (:data:`TABLE_VERSION`).

Derived from the pinned table rather than transcribed, so they keep in step with it:
Retain Longitudinal Temporal Information with Modified Dates (its column marks every
date and time row: DA, DT, TM) and Retain UIDs (its column keeps every ``U`` row).
Clean Pixel Data has no column: it is a flag the pixel policy reads.

Each option also has its PS3.16 CID 7050 code, recorded in De-identification Method Code
Sequence (0012,0064) so that a recipient can tell what was retained.
"""

from __future__ import annotations

import re
from functools import cache

from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacsflow.config import ProfileOption
from pacsflow.deid.basic_profile import BASIC_PROFILE_CODES, TABLE_VERSION
from pacsflow.deid.rules import DATE_VRS, TEXT_VRS, Operation, Rule

Code = tuple[str, str, str]
"""(Code Value, Coding Scheme Designator, Code Meaning) of a PS3.16 code."""

BASIC_PROFILE_CODE: Code = ("113100", "DCM", "Basic Application Confidentiality Profile")

# PS3.16 CID 7050 "De-identification Method".
OPTION_CODES: dict[ProfileOption, Code] = {
    ProfileOption.CLEAN_DESCRIPTORS: ("113105", "DCM", "Clean Descriptors Option"),
    ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107",
        "DCM",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: (
        "113108",
        "DCM",
        "Retain Patient Characteristics Option",
    ),
    ProfileOption.RETAIN_DEVICE_IDENTITY: ("113109", "DCM", "Retain Device Identity Option"),
    ProfileOption.RETAIN_SAFE_PRIVATE: ("113111", "DCM", "Retain Safe Private Option"),
    ProfileOption.RETAIN_UIDS: ("113110", "DCM", "Retain UIDs Option"),
    ProfileOption.RETAIN_INSTITUTION_IDENTITY: (
        "113112",
        "DCM",
        "Retain Institution Identity Option",
    ),
    ProfileOption.CLEAN_STRUCTURED_CONTENT: ("113104", "DCM", "Clean Structured Content Option"),
    ProfileOption.CLEAN_GRAPHICS: ("113103", "DCM", "Clean Graphics Option"),
    ProfileOption.CLEAN_PIXEL_DATA: ("113101", "DCM", "Clean Pixel Data Option"),
}

# Table E.1-1, "Rtn. Pat. Chars. Opt." column: K rows, then C rows.
_PATIENT_CHARACTERISTICS_KEEP = """
    EthnicGroup EthnicGroupCodeSequence (0010,2162) PatientAge PatientSex
    PatientSexNeutered PatientSize PatientWeight PregnancyStatus SmokingStatus
    SelectorASValue (0010,0043) (0010,0046) (0010,0047)
"""
_PATIENT_CHARACTERISTICS_CLEAN = "Allergies PatientState PreMedication SpecialNeeds (0010,0042)"

# PatientAge is kept under the option, but not above 89: HIPAA (45 CFR 164.514(b)(2)(i)(C))
# counts an age over 89 as an identifier, and PS3.15 E.3.1 leaves the cut to the site.
MAX_RETAINED_AGE_YEARS = 89

# Table E.1-1, "Rtn. Dev. Id. Opt." column: every row is K.
_DEVICE_IDENTITY_KEEP = """
    CassetteID DetectorID DeviceDescription DeviceLabel DeviceSerialNumber DeviceUID
    GantryID GeneratorID LensMake LensModel LensSerialNumber LensSpecification
    ManufacturerDeviceClassUID ManufacturerDeviceIdentifier PerformedStationAETitle
    PerformedStationGeographicLocationCodeSequence PerformedStationName
    PerformedStationNameCodeSequence PlateID ScheduledProcedureStepLocation
    ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence
    ScheduledStationName ScheduledStationNameCodeSequence ScheduledStudyLocation
    ScheduledStudyLocationAETitle SourceManufacturer SourceSerialNumber StationName
    TransducerIdentificationSequence TreatmentMachineName UDISequence
    UniqueDeviceIdentifier XRayDetectorID XRayDetectorLabel XRaySourceID
    CalibrationDate CalibrationTime CalibrationDateTime DateOfLastCalibration
    TimeOfLastCalibration DateTimeOfLastCalibration DateOfLastDetectorCalibration
    TimeOfLastDetectorCalibration DateOfManufacture DateOfInstallation ModifyingDeviceID
    ModifyingSystem BeamHoldTransitionDateTime
"""
_DEVICE_IDENTITY_CLEAN = """
    DestinationAE NetworkID Originator ReceivingAE RequestingAE RetrieveAETitle
    SelectorAEValue StationAETitle
"""

# Table E.1-1, "Rtn. Inst. Id. Opt." column: every row is K.
_INSTITUTION_IDENTITY_KEEP = """
    ClinicalTrialCoordinatingCenterName ClinicalTrialProtocolEthicsCommitteeName
    ClinicalTrialSiteID ClinicalTrialSiteName InstitutionAddress
    InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence
    InstitutionCodeSequence InstitutionName SourceOfPreviousValues
"""

# Table E.1-1, "Clean Struct. Cont. Opt." column: every row is C (sequences whose items
# are cleaned, so SR content keeps its tree and loses its identifiers).
_CLEAN_STRUCTURED_CONTENT = "AcquisitionContextSequence ContentSequence SpecimenPreparationSequence"

# Table E.1-1, "Clean Graph. Opt." column: Graphic Annotation Sequence is C (its text
# objects are cleaned); curves and overlays (50xx, 60xx) are the pixel policy's.
_CLEAN_GRAPHICS = "GraphicAnnotationSequence"

# Table E.1-1, "Clean Desc. Opt." column: every row is C.
_CLEAN_DESCRIPTORS = """
    AcquisitionComments AcquisitionDeviceProcessingDescription
    AcquisitionFieldOfViewLabel AcquisitionProtocolDescription AdditionalPatientHistory
    AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription Allergies
    BeamDescription BolusDescription ClinicalTrialSeriesDescription
    ClinicalTrialTimePointDescription CommentsOnRadiationDose
    CommentsOnThePerformedProcedureStep CompensatorDescription
    ConceptualVolumeCombinationDescription ConceptualVolumeDescription
    ContainerDescription ContrastBolusAgent ContributionDescription
    DecompositionDescription DerivationDescription DeviceSettingDescription
    DischargeDiagnosisDescription DoseReferenceDescription EntityDescription EntityLabel
    EntityLongLabel EntityName EquipmentFrameOfReferenceDescription
    FixationDeviceDescription FractionGroupDescription FractionationNotes FrameComments
    IdentifyingComments ImageComments ImagingServiceRequestComments Impressions
    InterlockDescription InterlockOriginDescription InterpretationDiagnosisDescription
    InterpretationText LabelText LongDeviceDescription MakerNote MedicalAlerts
    MultienergyAcquisitionDescription Occupation PatientComments PatientState
    PerformedProcedureStepDescription PrescriptionDescription PrescriptionNotes
    PrescriptionNotesSequence PriorTreatmentDoseDescription ProtocolName ROIDescription
    ROIGenerationDescription ROIName ROIObservationDescription ROIObservationLabel
    RTPhysicianIntentNarrative RTPlanDescription RTPlanLabel RTPlanName
    RTPrescriptionLabel RTToleranceSetLabel RTTreatmentApproachLabel
    RadiationDoseIdentificationLabel RadiationDoseInVivoMeasurementLabel
    RadiationGenerationModeDescription RadiationGenerationModeLabel
    ReasonForOmissionDescription ReasonForRequestedProcedureCodeSequence ReasonForStudy
    ReasonForSuperseding ReasonForTheImagingServiceRequest
    ReasonForTheRequestedProcedure ReasonForVisit ReasonForVisitCodeSequence
    RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments
    RequestedProcedureDescription RequestedSeriesDescription
    RespiratoryMotionCompensationTechniqueDescription ResultsComments
    ScheduledProcedureStepDescription SeriesDescription ServiceEpisodeDescription
    SetupTechniqueDescription ShieldingDeviceDescription SpecimenDetailedDescription
    SpecimenShortDescription StructureSetDescription StructureSetLabel StructureSetName
    StudyComments StudyDescription TreatmentPositionGroupLabel TreatmentSite
    TreatmentTechniqueNotes TreatmentToleranceViolationDescription UserContentLabel
    UserContentLongLabel VisitComments AnnotationGroupDescription AnnotationGroupLabel
    DisplacementReferenceLabel FilterLookupTableDescription PatientSetupPhotoDescription
    PatientTreatmentPreparationMethodDescription
    PatientTreatmentPreparationProcedureParameterDescription
    PositionAcquisitionTemplateDescription PositionAcquisitionTemplateName
    PyramidDescription PyramidLabel ReasonForTheAttributeModification SelectorLOValue
    SelectorLTValue SelectorSHValue SelectorSTValue SelectorUTValue TreatmentSites
    WaveformFilterDescription (0008,1301) (0008,1302) (0008,1303) (0008,1304)
    (0010,0016) (0010,0042) (0010,0045) (0040,B03B) (0040,B03F)
"""

# Dates the modified-dates option leaves to the Basic Profile: Table E.1-1 marks no
# option for them, and a birth date shifted by a patient's offset is still a birth date
# to within the shift window.
_NOT_SHIFTED = frozenset({0x00100030, 0x00100032})  # Patient's Birth Date, Birth Time


_TAG_WORD = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")


def _tags(keywords: str) -> list[int]:
    tags = []
    for keyword in keywords.split():
        if match := _TAG_WORD.match(keyword):  # a row newer than pydicom's dictionary
            tags.append(int(match[1], 16) << 16 | int(match[2], 16))
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise RuntimeError(f"option table names {keyword!r}, unknown to pydicom's dictionary")
        tags.append(tag)
    return tags


def _vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:  # a row newer than pydicom's dictionary
        return None


def _clean_or_remove(tag: int, source: str) -> Rule:
    # "C" on a binary attribute (Maker Note, Device Setting Description: OB) cannot be
    # cleaned as text, so it is removed, which PS3.15 E.1.1 always allows.
    vr = _vr(tag)
    if vr in TEXT_VRS or vr == "SQ":
        return Rule(Operation.CLEAN, source=source)
    return Rule(Operation.REMOVE, source=source + " (binary, cannot be cleaned)")


@cache
def option_rules(option: ProfileOption) -> dict[int, Rule]:
    """Public tag -> rule for one option; empty for Retain Safe Private (files list those)."""
    source = f"option {option.value}"
    if option is ProfileOption.RETAIN_PATIENT_CHARACTERISTICS:
        rules = {
            tag: Rule(Operation.KEEP, source=source) for tag in _tags(_PATIENT_CHARACTERISTICS_KEEP)
        }
        for tag in _tags(_PATIENT_CHARACTERISTICS_CLEAN):
            rules[tag] = _clean_or_remove(tag, source)
        return rules
    if option is ProfileOption.RETAIN_DEVICE_IDENTITY:
        rules = {tag: Rule(Operation.KEEP, source=source) for tag in _tags(_DEVICE_IDENTITY_KEEP)}
        for tag in _tags(_DEVICE_IDENTITY_CLEAN):
            rules[tag] = _clean_or_remove(tag, source)
        return rules
    if option is ProfileOption.RETAIN_INSTITUTION_IDENTITY:
        return {
            tag: Rule(Operation.KEEP, source=source) for tag in _tags(_INSTITUTION_IDENTITY_KEEP)
        }
    if option is ProfileOption.CLEAN_STRUCTURED_CONTENT:
        return {tag: _clean_or_remove(tag, source) for tag in _tags(_CLEAN_STRUCTURED_CONTENT)}
    if option is ProfileOption.CLEAN_GRAPHICS:
        return {tag: _clean_or_remove(tag, source) for tag in _tags(_CLEAN_GRAPHICS)}
    if option is ProfileOption.RETAIN_UIDS:
        return {
            int(tag): Rule(Operation.KEEP, source=source)
            for tag, code in BASIC_PROFILE_CODES.items()
            if "U" in code
        }
    if option is ProfileOption.CLEAN_DESCRIPTORS:
        return {tag: _clean_or_remove(tag, source) for tag in _tags(_CLEAN_DESCRIPTORS)}
    if option is ProfileOption.RETAIN_LONGITUDINAL_MODIFIED_DATES:
        rules = {}
        for tag in BASIC_PROFILE_CODES:
            vr = _vr(int(tag))
            if int(tag) in _NOT_SHIFTED or vr is None:
                continue
            if vr in DATE_VRS:
                rules[int(tag)] = Rule(Operation.SHIFT_DATE, source=source)
            elif vr == "TM":  # a shift by whole days leaves the time of day as it was
                rules[int(tag)] = Rule(Operation.KEEP, source=source)
        return rules
    # RETAIN_SAFE_PRIVATE: the allow-list comes from the profile files; CLEAN_PIXEL_DATA:
    # the pixel policy reads the option, no attribute rule changes.
    return {}


def option_rows(option: ProfileOption) -> list[int]:
    """The rows of Table E.1-1 an option's column marks (for checks against the table)."""
    return sorted(option_rules(option))


__all__ = ["MAX_RETAINED_AGE_YEARS", "OPTION_CODES", "TABLE_VERSION", "option_rows", "option_rules"]
