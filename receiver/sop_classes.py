"""Names for sets of storage SOP classes: modality shorthands, standard names and UIDs.

`--accept "CT,MR,US"` and `accepted_sop_classes` in the configuration file go through
`sop_classes_parse`, so both understand the same words.
"""

from collections.abc import Iterable

from pydicom.uid import UID
from pynetdicom import sop_class
from pynetdicom.presentation import AllStoragePresentationContexts

_SECONDARY_CAPTURE = [
    "SecondaryCaptureImageStorage",
    "MultiFrameSingleBitSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage",
]
_DIGITAL_XRAY = ["DigitalXRayImageStorageForPresentation", "DigitalXRayImageStorageForProcessing"]

# Modality (0008,0060) defined terms → the storage classes such devices send (PS3.3 C.7.3.1.1.1).
MODALITY_CLASSES: dict[str, list[str]] = {
    "CT": ["CTImageStorage", "EnhancedCTImageStorage", "LegacyConvertedEnhancedCTImageStorage"],
    "MR": [
        "MRImageStorage",
        "EnhancedMRImageStorage",
        "EnhancedMRColorImageStorage",
        "MRSpectroscopyStorage",
        "LegacyConvertedEnhancedMRImageStorage",
    ],
    "US": ["UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "EnhancedUSVolumeStorage"],
    "CR": ["ComputedRadiographyImageStorage"],
    "DX": _DIGITAL_XRAY,
    "PX": _DIGITAL_XRAY,  # panoramic dental X-ray uses the digital X-ray classes
    "MG": [
        "DigitalMammographyXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForProcessing",
        "BreastTomosynthesisImageStorage",
        "BreastProjectionXRayImageStorageForPresentation",
        "BreastProjectionXRayImageStorageForProcessing",
    ],
    "IO": [
        "DigitalIntraOralXRayImageStorageForPresentation",
        "DigitalIntraOralXRayImageStorageForProcessing",
    ],
    "NM": ["NuclearMedicineImageStorage"],
    "PT": [
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "LegacyConvertedEnhancedPETImageStorage",
    ],
    "XA": [
        "XRayAngiographicImageStorage",
        "EnhancedXAImageStorage",
        "XRay3DAngiographicImageStorage",
    ],
    "RF": ["XRayRadiofluoroscopicImageStorage", "EnhancedXRFImageStorage"],
    "SC": _SECONDARY_CAPTURE,
    "OT": _SECONDARY_CAPTURE,
    "SR": [
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "Comprehensive3DSRStorage",
        "ExtensibleSRStorage",
        "MammographyCADSRStorage",
        "ChestCADSRStorage",
        "ColonCADSRStorage",
        "XRayRadiationDoseSRStorage",
        "EnhancedXRayRadiationDoseSRStorage",
        "RadiopharmaceuticalRadiationDoseSRStorage",
        "PatientRadiationDoseSRStorage",
        "AcquisitionContextSRStorage",
        "SimplifiedAdultEchoSRStorage",
        "ImplantationPlanSRStorage",
        "ProcedureLogStorage",
    ],
    "KO": ["KeyObjectSelectionDocumentStorage"],
    "PR": [
        "GrayscaleSoftcopyPresentationStateStorage",
        "ColorSoftcopyPresentationStateStorage",
        "PseudoColorSoftcopyPresentationStageStorage",
        "BlendingSoftcopyPresentationStateStorage",
        "XAXRFGrayscaleSoftcopyPresentationStateStorage",
        "AdvancedBlendingPresentationStateStorage",
        "VariableModalityLUTSoftcopyPresentationStageStorage",
    ],
    "SEG": [
        "SegmentationStorage",
        "SurfaceSegmentationStorage",
        "LabelMapSegmentationStorage",
        "HeightMapSegmentationStorage",
    ],
    "RT": [
        "RTImageStorage",
        "RTDoseStorage",
        "RTStructureSetStorage",
        "RTPlanStorage",
        "RTIonPlanStorage",
        "RTBeamsTreatmentRecordStorage",
        "RTBrachyTreatmentRecordStorage",
        "RTTreatmentSummaryRecordStorage",
        "RTIonBeamsTreatmentRecordStorage",
    ],
    "RTIMAGE": ["RTImageStorage", "EnhancedRTImageStorage", "EnhancedContinuousRTImageStorage"],
    "RTDOSE": ["RTDoseStorage"],
    "RTSTRUCT": ["RTStructureSetStorage"],
    "RTPLAN": ["RTPlanStorage", "RTIonPlanStorage"],
    "ECG": [
        "TwelveLeadECGWaveformStorage",
        "GeneralECGWaveformStorage",
        "General32bitECGWaveformStorage",
        "AmbulatoryECGWaveformStorage",
    ],
    "HD": ["HemodynamicWaveformStorage"],
    "EPS": ["CardiacElectrophysiologyWaveformStorage"],
    "XC": ["VLPhotographicImageStorage", "VideoPhotographicImageStorage"],
    "ES": ["VLEndoscopicImageStorage", "VideoEndoscopicImageStorage"],
    "SM": ["VLWholeSlideMicroscopyImageStorage", "VLMicroscopicImageStorage"],
    "OP": ["OphthalmicPhotography8BitImageStorage", "OphthalmicPhotography16BitImageStorage"],
    "OPT": ["OphthalmicTomographyImageStorage"],
    "DOC": ["EncapsulatedPDFStorage", "EncapsulatedCDAStorage"],
    "REG": ["SpatialRegistrationStorage", "DeformableSpatialRegistrationStorage"],
}


def storage_sop_classes() -> list[UID]:
    """Every storage SOP class pynetdicom knows."""
    return [UID(cx.abstract_syntax) for cx in AllStoragePresentationContexts]


def _by_name() -> dict[str, UID]:
    """Standard names ("CT Image Storage") and keywords ("CTImageStorage") of storage classes,
    folded to upper case without spaces or punctuation."""
    names: dict[str, UID] = {}
    for uid in storage_sop_classes():
        names[_fold(uid.name)] = uid
        keyword = getattr(uid, "keyword", "")
        if keyword:
            names[_fold(keyword)] = uid
    for keyword, uid in vars(sop_class).items():
        if isinstance(uid, str) and uid in names.values():
            names[_fold(keyword)] = UID(uid)
    return names


def _fold(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


_STORAGE = set(storage_sop_classes())
_NAMES = _by_name()


def sop_classes_parse(entries: Iterable[str]) -> list[UID]:
    """Expand modality shorthands, standard names and UIDs into storage SOP class UIDs.

    Raises ValueError naming the first entry that is none of these.
    """
    result: dict[UID, None] = {}
    for entry in entries:
        text = str(entry).strip()
        if not text:
            continue
        if text.upper() in MODALITY_CLASSES:
            for keyword in MODALITY_CLASSES[text.upper()]:
                result[UID(getattr(sop_class, keyword))] = None
        elif text[0].isdigit():
            uid = UID(text)
            if uid not in _STORAGE:
                raise ValueError(f"{text!r} is not a storage SOP class UID")
            result[uid] = None
        elif _fold(text) in _NAMES:
            result[_NAMES[_fold(text)]] = None
        else:
            raise ValueError(
                f"unknown SOP class {text!r}: use a modality ({', '.join(MODALITY_CLASSES)}), "
                "a standard name such as 'CT Image Storage', or a UID"
            )
    return list(result)
