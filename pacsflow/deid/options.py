"""The PS3.15 Annex E profile options, as rules layered on the Basic Profile.

Why a transcription and not a library: dicom-anonymizer ships only the Basic Profile
column of Table E.1-1, and no maintained package on PyPI ships the option columns.
The option columns are short, so the rows below are transcribed from PS3.15 Table E.1-1
("Rtn. Pat. Chars. Opt.", "Rtn. Dev. Id. Opt.", "Clean Desc. Opt.") by attribute keyword;
keywords are checked against pydicom's data dictionary at import, so a typo fails the
test run, not an export. Retain Longitudinal Temporal Information with Modified Dates is
not transcribed: its column marks every date and time row of the table, so it is
derived from the pinned table by VR (DA, DT, TM), which keeps it in step with the table.

Each option also has its PS3.16 CID 7050 code, recorded in De-identification Method Code
Sequence (0012,0064) so that a recipient can tell what was retained.
"""

from __future__ import annotations

from functools import cache

from pydicom.datadict import dictionary_VR, tag_for_keyword

from pacsflow.config import ProfileOption
from pacsflow.deid.basic_profile import BASIC_PROFILE_CODES
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
}

# Table E.1-1, "Rtn. Pat. Chars. Opt." column: K rows, then C rows.
_PATIENT_CHARACTERISTICS_KEEP = """
    EthnicGroup PatientAge PatientSex PatientSexNeutered PatientSize PatientWeight
    PregnancyStatus SmokingStatus
"""
_PATIENT_CHARACTERISTICS_CLEAN = "Allergies PatientState PreMedication SpecialNeeds"

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
"""

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
    UserContentLongLabel VisitComments
"""

# Dates the modified-dates option leaves to the Basic Profile: Table E.1-1 marks no
# option for them, and a birth date shifted by a patient's offset is still a birth date
# to within the shift window.
_NOT_SHIFTED = frozenset({0x00100030, 0x00100032})  # Patient's Birth Date, Birth Time


def _tags(keywords: str) -> list[int]:
    tags = []
    for keyword in keywords.split():
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
        return {tag: Rule(Operation.KEEP, source=source) for tag in _tags(_DEVICE_IDENTITY_KEEP)}
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
    return {}  # RETAIN_SAFE_PRIVATE: the allow-list comes from the profile files
