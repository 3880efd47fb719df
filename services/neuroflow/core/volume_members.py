"""Which instances of a series hold one of its volumes, from the headers alone.

A result drawn on one volume of a multi-volume series (an echo, a time point, a b-value's trace, the
computed ADC) references the instances that volume was built from. Conversion (preprocess), the results
stage and the longitudinal stage all need that answer; it lives here so none of them imports another."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from neuroflow.core.dwi_volumes import Derivation, diffusion_volumes
from neuroflow.core.errors import SeriesRejected
from neuroflow.core.split_volumes import header_frames, split_frames


def volume_instances(instances: Sequence[Dataset], *, study_key: str, volume: str = "") -> list[Dataset]:
    """The instances that hold ``volume`` of a series (all of them for ""), in the order given. A computed
    volume (a trace, the ADC) is held by the instances of the volumes it comes from. Refuses
    (SeriesRejected) a label the series does not hold."""
    if not volume:
        return list(instances)
    series_uid = str(instances[0].get("SeriesInstanceUID", "")) or None if instances else None
    frames = header_frames(instances)
    if frames is None:
        raise SeriesRejected(study_key, f"volume {volume!r}: a frame's position or orientation cannot be read",
                             stage="convert", series_uid=series_uid)
    split = split_frames([location for _, location in frames])
    members = {v.label: {frames[i][0] for i in v.frames} for v in split.volumes}
    held = members.get(volume)
    if held is None:
        derived = next((d for d in diffusion_volumes(split) if d.label == volume), None)
        if derived is not None:
            sources = list(members) if derived.derivation == Derivation.ADC else derived.sources  # ADC: all
            held = {i for source in sources for i in members[source]}
    if not held:
        raise SeriesRejected(study_key, f"has no volume {volume!r}; it holds {split.describe()}", stage="convert",
                             series_uid=series_uid)
    return [ds for index, ds in enumerate(instances) if index in held]
