"""How real scanners name and describe their series: the one place the DICOM writer takes its
vendor-specific tags from.

The names and parameters are the ones sites see from Siemens, GE and Philips brain protocols
(3 T, product sequences); ``also_seen_as`` lists other descriptions the same series goes by at other
sites, so a routing test can draw from them. Timing values are in milliseconds, flip angles in
degrees, as DICOM stores them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from neuroflow.core.roles import SeriesRole


class Vendor(StrEnum):
    SIEMENS = "SIEMENS"
    GE = "GE"
    PHILIPS = "PHILIPS"


@dataclass(frozen=True)
class Equipment:
    """One vendor's scanners as they write the General Equipment module."""

    manufacturer: str  # exactly as the vendor writes (0008,0070)
    mr_model: str
    ct_model: str
    software_versions: str
    field_strength_t: float
    station_name: str
    # Series numbering differs by vendor (Philips counts in hundreds); routing must not care.
    first_series_number: int
    series_number_step: int


@dataclass(frozen=True)
class SequencePreset:
    """The acquisition-describing tags of one series. MR-only fields stay ``None``/empty for CT."""

    role: SeriesRole
    modality: str  # "MR" or "CT"
    series_description: str
    protocol_name: str
    image_type: tuple[str, ...]
    sequence_name: str = ""
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    scan_options: tuple[str, ...] = ()
    acquisition_type: str = "2D"  # MRAcquisitionType: 2D or 3D
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    flip_angle_deg: float | None = None
    echo_train_length: int = 1
    diffusion_b_value: float | None = None
    contrast_agent: str | None = None  # set for post-contrast series only
    kvp: float | None = None  # CT
    convolution_kernel: str | None = None  # CT
    also_seen_as: tuple[str, ...] = ()


EQUIPMENT: dict[Vendor, Equipment] = {
    Vendor.SIEMENS: Equipment(
        manufacturer="SIEMENS",
        mr_model="MAGNETOM Prisma",
        ct_model="SOMATOM Definition AS+",
        software_versions="syngo MR XA30",
        field_strength_t=3.0,
        station_name="MRC45123",
        first_series_number=2,
        series_number_step=1,
    ),
    Vendor.GE: Equipment(
        manufacturer="GE MEDICAL SYSTEMS",
        mr_model="SIGNA Premier",
        ct_model="Revolution CT",
        software_versions="29\\LX\\MR Software release:RX29.1_R02_2249.a",
        field_strength_t=3.0,
        station_name="GEMR3T01",
        first_series_number=2,
        series_number_step=1,
    ),
    Vendor.PHILIPS: Equipment(
        manufacturer="Philips Medical Systems",
        mr_model="Ingenia",
        ct_model="IQon - Spectral CT",
        software_versions="5.7.1\\5.7.1.0",
        field_strength_t=3.0,
        station_name="PHILIPS-7H2K4",
        first_series_number=301,
        series_number_step=100,
    ),
}

_SIEMENS_MR_IMAGE_TYPE = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
_GE_MR_IMAGE_TYPE = ("ORIGINAL", "PRIMARY", "OTHER")

PRESETS: dict[Vendor, dict[SeriesRole, SequencePreset]] = {
    Vendor.SIEMENS: {
        SeriesRole.T1: SequencePreset(
            role=SeriesRole.T1,
            modality="MR",
            series_description="t1_mprage_sag_p2_iso",
            protocol_name="t1_mprage_sag_p2_iso",
            image_type=_SIEMENS_MR_IMAGE_TYPE,
            sequence_name="*tfl3d1_16ns",
            scanning_sequence=("GR", "IR"),
            sequence_variant=("SK", "SP", "MP"),
            scan_options=("IR",),
            acquisition_type="3D",
            repetition_time_ms=2300.0,
            echo_time_ms=2.32,
            inversion_time_ms=900.0,
            flip_angle_deg=8.0,
            also_seen_as=("t1_mprage_tra_p2_iso", "T1 MPRAGE", "t1_fl3d_sag_iso"),
        ),
        SeriesRole.T1CE: SequencePreset(
            role=SeriesRole.T1CE,
            modality="MR",
            series_description="t1_mprage_sag_p2_iso_Gd",
            protocol_name="t1_mprage_sag_p2_iso_Gd",
            image_type=_SIEMENS_MR_IMAGE_TYPE,
            sequence_name="*tfl3d1_16ns",
            scanning_sequence=("GR", "IR"),
            sequence_variant=("SK", "SP", "MP"),
            scan_options=("IR",),
            acquisition_type="3D",
            repetition_time_ms=2300.0,
            echo_time_ms=2.32,
            inversion_time_ms=900.0,
            flip_angle_deg=8.0,
            contrast_agent="Gadovist",
            also_seen_as=("T1 MPRAGE +C", "t1_mprage_tra_p2_iso_post", "t1_mprage_sag_KM"),
        ),
        SeriesRole.T2: SequencePreset(
            role=SeriesRole.T2,
            modality="MR",
            series_description="t2_tse_tra",
            protocol_name="t2_tse_tra",
            image_type=_SIEMENS_MR_IMAGE_TYPE,
            sequence_name="*tse2d1_15",
            scanning_sequence=("SE",),
            sequence_variant=("SK", "SP", "OSP"),
            scan_options=("PFP",),
            repetition_time_ms=6000.0,
            echo_time_ms=99.0,
            flip_angle_deg=150.0,
            echo_train_length=15,
            also_seen_as=("t2_tse_tra_p2", "T2 TSE AX", "t2_blade_tra"),
        ),
        SeriesRole.FLAIR: SequencePreset(
            role=SeriesRole.FLAIR,
            modality="MR",
            series_description="t2_tirm_tra_dark-fluid",
            protocol_name="t2_tirm_tra_dark-fluid",
            image_type=_SIEMENS_MR_IMAGE_TYPE,
            sequence_name="*tir2d1_16",
            scanning_sequence=("SE", "IR"),
            sequence_variant=("SK", "SP", "MP"),
            scan_options=("IR",),
            repetition_time_ms=9000.0,
            echo_time_ms=81.0,
            inversion_time_ms=2500.0,
            flip_angle_deg=150.0,
            echo_train_length=16,
            also_seen_as=("t2_spc_da-fl_sag_p2_iso", "t2_flair_tra", "FLAIR AX"),
        ),
        SeriesRole.DWI: SequencePreset(
            role=SeriesRole.DWI,
            modality="MR",
            series_description="ep2d_diff_3scan_trace_p2_TRACEW",
            protocol_name="ep2d_diff_3scan_trace_p2",
            image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND", "NORM"),
            sequence_name="*ep_b1000t",
            scanning_sequence=("EP",),
            sequence_variant=("SK", "SP"),
            scan_options=("PFP", "FS"),
            repetition_time_ms=5000.0,
            echo_time_ms=89.0,
            flip_angle_deg=90.0,
            echo_train_length=1,
            diffusion_b_value=1000.0,
            also_seen_as=("ep2d_diff_tra_TRACEW", "DWI b1000"),
        ),
        SeriesRole.ADC: SequencePreset(
            role=SeriesRole.ADC,
            modality="MR",
            series_description="ep2d_diff_3scan_trace_p2_ADC",
            protocol_name="ep2d_diff_3scan_trace_p2",
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"),
            sequence_name="*ep_b0_1000",
            scanning_sequence=("EP",),
            sequence_variant=("SK", "SP"),
            scan_options=("PFP", "FS"),
            repetition_time_ms=5000.0,
            echo_time_ms=89.0,
            flip_angle_deg=90.0,
            also_seen_as=("ep2d_diff_tra_ADC", "ADC"),
        ),
        SeriesRole.SWI: SequencePreset(
            role=SeriesRole.SWI,
            modality="MR",
            series_description="t2_swi_tra_p2_1.5mm_SWI",
            protocol_name="t2_swi_tra_p2_1.5mm",
            image_type=("DERIVED", "PRIMARY", "M", "SWI", "ND", "NORM"),
            sequence_name="*swi3d1r",
            scanning_sequence=("GR",),
            sequence_variant=("SK", "SP", "OSP"),
            acquisition_type="3D",
            repetition_time_ms=27.0,
            echo_time_ms=20.0,
            flip_angle_deg=15.0,
            also_seen_as=("SWI_Images", "t2_swi_tra_mIP"),
        ),
        SeriesRole.CT: SequencePreset(
            role=SeriesRole.CT,
            modality="CT",
            series_description="Head  5.0  H31s",
            protocol_name="HeadSeq",
            image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            kvp=120.0,
            convolution_kernel="H31s",
            also_seen_as=("Head 5.0 J40s", "CT HEAD W/O"),
        ),
    },
    Vendor.GE: {
        SeriesRole.T1: SequencePreset(
            role=SeriesRole.T1,
            modality="MR",
            series_description="Ax T1 BRAVO",
            protocol_name="BRAIN ROUTINE/7",
            image_type=_GE_MR_IMAGE_TYPE,
            sequence_name="efgre3d",
            scanning_sequence=("GR", "IR"),
            sequence_variant=("SK", "SS"),
            scan_options=("FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS", "ACC_GEMS", "IR_GEMS"),
            acquisition_type="3D",
            repetition_time_ms=8.2,
            echo_time_ms=3.2,
            inversion_time_ms=450.0,
            flip_angle_deg=12.0,
            also_seen_as=("Sag T1 BRAVO", "AX T1 3D BRAVO", "T1 PRE"),
        ),
        SeriesRole.T1CE: SequencePreset(
            role=SeriesRole.T1CE,
            modality="MR",
            series_description="Ax T1 BRAVO +C",
            protocol_name="BRAIN ROUTINE/7",
            image_type=_GE_MR_IMAGE_TYPE,
            sequence_name="efgre3d",
            scanning_sequence=("GR", "IR"),
            sequence_variant=("SK", "SS"),
            scan_options=("FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS", "ACC_GEMS", "IR_GEMS"),
            acquisition_type="3D",
            repetition_time_ms=8.2,
            echo_time_ms=3.2,
            inversion_time_ms=450.0,
            flip_angle_deg=12.0,
            contrast_agent="MultiHance",
            also_seen_as=("T1 POST GD", "Sag T1 BRAVO +C", "AX T1 POST"),
        ),
        SeriesRole.T2: SequencePreset(
            role=SeriesRole.T2,
            modality="MR",
            series_description="AX T2 FSE",
            protocol_name="BRAIN ROUTINE/7",
            image_type=_GE_MR_IMAGE_TYPE,
            sequence_name="fse-xl",
            scanning_sequence=("SE",),
            sequence_variant=("SK",),
            scan_options=("FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS", "SAT_GEMS"),
            repetition_time_ms=5000.0,
            echo_time_ms=102.0,
            flip_angle_deg=111.0,
            echo_train_length=18,
            also_seen_as=("Ax T2 PROPELLER", "AX T2 FRFSE"),
        ),
        SeriesRole.FLAIR: SequencePreset(
            role=SeriesRole.FLAIR,
            modality="MR",
            series_description="AX FLAIR",
            protocol_name="BRAIN ROUTINE/7",
            image_type=_GE_MR_IMAGE_TYPE,
            sequence_name="fse-ir",
            scanning_sequence=("SE", "IR"),
            sequence_variant=("SK", "OSP"),
            scan_options=("FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS", "IR_GEMS"),
            repetition_time_ms=9000.0,
            echo_time_ms=125.0,
            inversion_time_ms=2375.0,
            flip_angle_deg=111.0,
            echo_train_length=24,
            also_seen_as=("AX T2 FLAIR", "Sag CUBE FLAIR", "T2 FLAIR AX"),
        ),
        SeriesRole.DWI: SequencePreset(
            role=SeriesRole.DWI,
            modality="MR",
            series_description="Ax DWI 1000b",
            protocol_name="BRAIN ROUTINE/7",
            image_type=_GE_MR_IMAGE_TYPE,
            sequence_name="epi2",
            scanning_sequence=("SE", "EP"),
            sequence_variant=("SK", "SS"),
            scan_options=("EPI_GEMS", "EDR_GEMS", "FILTERED_GEMS"),
            repetition_time_ms=6000.0,
            echo_time_ms=80.0,
            flip_angle_deg=90.0,
            diffusion_b_value=1000.0,
            also_seen_as=("AX DWI", "DWI ASSET b1000"),
        ),
        SeriesRole.ADC: SequencePreset(
            role=SeriesRole.ADC,
            modality="MR",
            series_description="Apparent Diffusion Coefficient (mm2/s)",
            protocol_name="BRAIN ROUTINE/7",
            image_type=("DERIVED", "PRIMARY", "ADC"),
            sequence_name="epi2",
            scanning_sequence=("SE", "EP"),
            sequence_variant=("SK", "SS"),
            scan_options=("EPI_GEMS", "EDR_GEMS", "FILTERED_GEMS"),
            repetition_time_ms=6000.0,
            echo_time_ms=80.0,
            flip_angle_deg=90.0,
            also_seen_as=("ADC", "Ax DWI ADC"),
        ),
        SeriesRole.SWI: SequencePreset(
            role=SeriesRole.SWI,
            modality="MR",
            series_description="Ax SWAN",
            protocol_name="BRAIN ROUTINE/7",
            image_type=_GE_MR_IMAGE_TYPE,
            sequence_name="swan",
            scanning_sequence=("GR",),
            sequence_variant=("SS", "SK"),
            scan_options=("EDR_GEMS", "FILTERED_GEMS", "ACC_GEMS"),
            acquisition_type="3D",
            repetition_time_ms=40.0,
            echo_time_ms=24.0,
            flip_angle_deg=15.0,
            also_seen_as=("SWAN", "Ax SWAN mIP"),
        ),
        SeriesRole.CT: SequencePreset(
            role=SeriesRole.CT,
            modality="CT",
            series_description="5mm STND",
            protocol_name="7.1 ROUTINE HEAD",
            image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            kvp=120.0,
            convolution_kernel="STANDARD",
            also_seen_as=("HEAD 5mm", "Axial 5mm BRAIN"),
        ),
    },
    Vendor.PHILIPS: {
        SeriesRole.T1: SequencePreset(
            role=SeriesRole.T1,
            modality="MR",
            series_description="3D_T1W_TFE",
            protocol_name="3D_T1W_TFE",
            image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
            sequence_name="T1TFE",
            scanning_sequence=("GR",),
            sequence_variant=("SP", "MP"),
            scan_options=("OTHER",),
            acquisition_type="3D",
            repetition_time_ms=8.1,
            echo_time_ms=3.7,
            flip_angle_deg=8.0,
            echo_train_length=150,
            also_seen_as=("T1W_3D_TFE", "sT1W_3D_TFE", "T1 3D pre"),
        ),
        SeriesRole.T1CE: SequencePreset(
            role=SeriesRole.T1CE,
            modality="MR",
            series_description="T1W_3D_TFE_GD",
            protocol_name="T1W_3D_TFE_GD",
            image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
            sequence_name="T1TFE",
            scanning_sequence=("GR",),
            sequence_variant=("SP", "MP"),
            scan_options=("OTHER",),
            acquisition_type="3D",
            repetition_time_ms=8.1,
            echo_time_ms=3.7,
            flip_angle_deg=8.0,
            echo_train_length=150,
            contrast_agent="Dotarem",
            also_seen_as=("3D_T1W_TFE_+C", "T1W_3D_TFE_post", "sT1W_3D_TFE_Gd"),
        ),
        SeriesRole.T2: SequencePreset(
            role=SeriesRole.T2,
            modality="MR",
            series_description="T2W_TSE",
            protocol_name="T2W_TSE",
            image_type=("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"),
            sequence_name="TSE",
            scanning_sequence=("SE",),
            sequence_variant=("SK",),
            scan_options=("OTHER",),
            repetition_time_ms=3000.0,
            echo_time_ms=80.0,
            flip_angle_deg=90.0,
            echo_train_length=15,
            also_seen_as=("T2W_TSE_tra", "AX T2W"),
        ),
        SeriesRole.FLAIR: SequencePreset(
            role=SeriesRole.FLAIR,
            modality="MR",
            series_description="FLAIR_longTR",
            protocol_name="FLAIR_longTR",
            image_type=("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"),
            sequence_name="IRTSE",
            scanning_sequence=("SE", "IR"),
            sequence_variant=("SK", "MP"),
            scan_options=("OTHER",),
            repetition_time_ms=11000.0,
            echo_time_ms=125.0,
            inversion_time_ms=2800.0,
            flip_angle_deg=90.0,
            echo_train_length=30,
            also_seen_as=("T2W_FLAIR", "3D_FLAIR", "VISTA_FLAIR"),
        ),
        SeriesRole.DWI: SequencePreset(
            role=SeriesRole.DWI,
            modality="MR",
            series_description="DWI_SENSE",
            protocol_name="DWI_SENSE",
            image_type=("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"),
            sequence_name="DwiSE",
            scanning_sequence=("SE", "EP"),
            sequence_variant=("SK",),
            scan_options=("FS",),
            repetition_time_ms=4500.0,
            echo_time_ms=90.0,
            flip_angle_deg=90.0,
            diffusion_b_value=1000.0,
            also_seen_as=("DWI_b1000", "sDWI"),
        ),
        SeriesRole.ADC: SequencePreset(
            role=SeriesRole.ADC,
            modality="MR",
            series_description="dADC",
            protocol_name="DWI_SENSE",
            image_type=("DERIVED", "PRIMARY", "ADC", "ADC"),
            sequence_name="DwiSE",
            scanning_sequence=("SE", "EP"),
            sequence_variant=("SK",),
            scan_options=("FS",),
            repetition_time_ms=4500.0,
            echo_time_ms=90.0,
            flip_angle_deg=90.0,
            also_seen_as=("DWI_SENSE_ADC", "ADC"),
        ),
        SeriesRole.SWI: SequencePreset(
            role=SeriesRole.SWI,
            modality="MR",
            series_description="SWIp",
            protocol_name="SWIp",
            image_type=("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
            sequence_name="FEEPI",
            scanning_sequence=("GR",),
            sequence_variant=("SP",),
            scan_options=("OTHER",),
            acquisition_type="3D",
            repetition_time_ms=31.0,
            echo_time_ms=7.2,
            flip_angle_deg=17.0,
            also_seen_as=("SWIp_mIP", "SWI"),
        ),
        SeriesRole.CT: SequencePreset(
            role=SeriesRole.CT,
            modality="CT",
            series_description="Brain 5mm",
            protocol_name="Brain Routine",
            image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            kvp=120.0,
            convolution_kernel="UB",
            also_seen_as=("Brain 5.0 mm", "CT BRAIN"),
        ),
    },
}

# Siemens series that hold several volumes (each volume's own tags are the writer's VolumeTags): the
# multi-volume and MOSAIC tests write these. Echo times are the first echo's.
MULTI_VOLUME_PRESETS: dict[str, SequencePreset] = {
    "field_map": SequencePreset(
        role=SeriesRole.OTHER,
        modality="MR",
        series_description="gre_field_mapping",
        protocol_name="gre_field_mapping",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        sequence_name="*fm2d2r",
        scanning_sequence=("GR",),
        sequence_variant=("SP",),
        repetition_time_ms=488.0,
        echo_time_ms=4.92,
        flip_angle_deg=60.0,
    ),
    "dynamic": SequencePreset(
        role=SeriesRole.OTHER,
        modality="MR",
        series_description="t1_fl2d_tra_dynamic",
        protocol_name="t1_fl2d_tra_dynamic",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
        sequence_name="*fl2d1",
        scanning_sequence=("GR",),
        sequence_variant=("SP", "OSP"),
        repetition_time_ms=180.0,
        echo_time_ms=2.46,
        flip_angle_deg=70.0,
    ),
    "dwi_directions": SequencePreset(
        role=SeriesRole.DWI,
        modality="MR",
        series_description="ep2d_diff_mddw_3dir_p2",
        protocol_name="ep2d_diff_mddw_3dir_p2",
        image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "NORM"),
        sequence_name="*ep_b1000#1",
        scanning_sequence=("EP",),
        sequence_variant=("SK", "SP"),
        scan_options=("PFP", "FS"),
        repetition_time_ms=5000.0,
        echo_time_ms=89.0,
        flip_angle_deg=90.0,
    ),
    "bold_mosaic": SequencePreset(
        role=SeriesRole.OTHER,
        modality="MR",
        series_description="ep2d_bold_moco",
        protocol_name="ep2d_bold_moco",
        image_type=("ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"),
        sequence_name="*epfid2d1_64",
        scanning_sequence=("EP",),
        sequence_variant=("SK",),
        scan_options=("FS",),
        repetition_time_ms=2000.0,
        echo_time_ms=30.0,
        flip_angle_deg=90.0,
    ),
}
MULTI_VOLUME_PRESETS["pd_t2"] = SequencePreset(  # a dual-echo TSE: echo 1 proton density, echo 2 T2
    role=SeriesRole.T2,
    modality="MR",
    series_description="pd+t2_tse_tra",
    protocol_name="pd+t2_tse_tra",
    image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
    sequence_name="*tse2d2_8",
    scanning_sequence=("SE",),
    sequence_variant=("SK", "SP", "OSP"),
    repetition_time_ms=3500.0,
    echo_time_ms=12.0,
    flip_angle_deg=150.0,
    echo_train_length=8,
)
