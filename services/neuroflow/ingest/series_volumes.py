"""A series that holds several volumes is classified volume by volume.

Echoes of a field map, the time points of a dynamic series, the b=0, trace and computed ADC of a
diffusion series (``core.split_volumes`` and ``core.dwi_volumes`` say which volumes a series holds,
from its headers alone) each get their own HeaderFacts, with the sub-series identity
"<series uid>#<volume>" that conversion takes back to that volume."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pydicom.dataset import Dataset

from neuroflow.core.dicom_io import SeriesInstances
from neuroflow.core.dwi_volumes import ADC_LABEL, Derivation, diffusion_volumes
from neuroflow.core.split_volumes import header_frames, one_volume, split_frames
from neuroflow.core.sub_series import sub_series_uid
from neuroflow.ingest.header_facts import HeaderFacts, read_facts

_TRACE_IMAGE_TYPE = ("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW")
_ADC_IMAGE_TYPE = ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")


@dataclass(frozen=True)
class SeriesVolume:
    """One volume of a series, as classification sees it."""

    facts: HeaderFacts
    label: str  # "" when the series is one volume; else "echo=2", "b=1000", "adc"
    description: str  # what the volume is, in words
    computed_adc: bool = False
    series_description: str = ""  # the series' own, as the scanner wrote it


def series_facts(series: SeriesInstances) -> HeaderFacts:
    """The facts of a whole series, from its first instance (by InstanceNumber) and all headers."""
    if not series.headers:
        return HeaderFacts(series_instance_uid=series.series_instance_uid)
    return _facts(series.series_instance_uid, series.headers, len(series.headers))


def volumes_of(series: SeriesInstances) -> list[SeriesVolume]:
    """The volumes of a series with their facts: one (label "") unless echoes, time points,
    acquisitions, stacks or diffusion b-values and directions share slice positions. Never raises."""
    whole = series_facts(series)
    # Positions first: most series are one stack, and then what tells volumes apart need not be read.
    frames = header_frames(series.headers, with_keys=False) if series.headers else None
    split = None
    if frames and not one_volume([location for _, location in frames]):
        frames = header_frames(series.headers)
        split = split_frames([location for _, location in frames]) if frames else None
    if frames is None or split is None or not split.is_split:
        # A MOSAIC image holds all its slices: count those, as an enhanced object's frames are.
        return [SeriesVolume(replace(whole, instance_count=len(frames)) if frames else whole, "", "")]
    uid = series.series_instance_uid
    members = {v.label: [frames[i][0] for i in v.frames] for v in split.volumes}
    diffusion = diffusion_volumes(split)
    if not diffusion:
        out = []
        for volume in split.volumes:
            facts = _facts(uid, [series.headers[i] for i in sorted(set(members[volume.label]))],
                           len(members[volume.label]))
            if volume.keys.get("te"):
                facts = replace(facts, echo_time_ms=float(volume.keys["te"]))
            out.append(SeriesVolume(replace(facts, series_instance_uid=sub_series_uid(uid, volume.label)),
                                    volume.label, volume.label, series_description=whole.series_description))
        return out
    out = []
    for derived in diffusion:
        sources = list(members) if derived.derivation == Derivation.ADC else derived.sources  # ADC: all of them
        frames_of = [i for source in sources for i in members[source]]
        facts = _facts(uid, [series.headers[i] for i in sorted(set(frames_of))], len(frames_of) // len(sources))
        # The computed ADC is an image the scanner's names and sequence do not describe (they say
        # "diffusion"): it is judged by what it is, a derived ADC map from these b-values.
        if derived.derivation == Derivation.ADC:
            facts = replace(facts, image_type=_ADC_IMAGE_TYPE, b_values=derived.b_values, sequence_name="",
                            series_description="", protocol_name="")
        elif len(derived.sources) > 1:
            facts = replace(facts, image_type=_TRACE_IMAGE_TYPE, b_values=derived.b_values)
        else:
            facts = replace(facts, b_values=derived.b_values)
        out.append(SeriesVolume(replace(facts, series_instance_uid=sub_series_uid(uid, derived.label)),
                                derived.label, derived.describe(), computed_adc=derived.label == ADC_LABEL,
                                series_description=whole.series_description))
    return out


def _facts(series_uid: str, headers: list[Dataset], frames: int) -> HeaderFacts:
    first = min(headers, key=_instance_number)
    facts = read_facts(first, len(headers), others=headers)
    if len(headers) != frames:  # frames of enhanced objects or tiles of a MOSAIC: count the slices
        facts = replace(facts, instance_count=frames)
    return facts if facts.series_instance_uid else replace(facts, series_instance_uid=series_uid)


def _instance_number(ds: Dataset) -> float:
    try:
        return float(ds.get("InstanceNumber"))
    except Exception:  # missing or junk: keep the source order for those
        return math.inf
