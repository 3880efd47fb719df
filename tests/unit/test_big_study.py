"""A large CT study indexes and converts: every instance of every series found (headers only, no pixel
data held by the index), and a 400-image series converts to exactly the written volume and geometry.
Modest matrices keep it quick; scripts/bench_indexing.py runs the 2,000-instance, 512 x 512 study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuroflow.core.dicom_io import FolderDicomSource, study_key
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.devtools.big_study import CtSeries, write_ct_study
from neuroflow.ingest.classify import classify_study

SERIES_SLICES = (400, 150, 50)


@pytest.fixture(scope="module")
def big_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CtSeries]]:
    folder = tmp_path_factory.mktemp("big-ct")
    return folder, write_ct_study(folder, SERIES_SLICES, matrix=48)


def test_every_instance_of_a_600_instance_study_is_indexed_headers_only(
    big_study: tuple[Path, list[CtSeries]]
) -> None:
    folder, written = big_study
    studies, skipped = FolderDicomSource(folder).index()
    assert skipped == []
    (study,) = studies.values()
    assert {uid: len(s.headers) for uid, s in study.series.items()} == {
        w.series_instance_uid: len(w.paths) for w in written}
    assert not any("PixelData" in h for s in study.series.values() for h in s.headers)
    assert {c.role for c in classify_study(list(study.series.values()))} == {SeriesRole.CT}


def test_a_400_image_series_converts_exactly(big_study: tuple[Path, list[CtSeries]]) -> None:
    folder, written = big_study
    source = FolderDicomSource(folder)
    studies, _ = source.index()
    (study,) = studies.values()
    largest = written[0]
    volume = series_to_volume(source.read_instances(study.series[largest.series_instance_uid]),
                              study_key=study_key(study.study_instance_uid))
    assert volume.array.shape == (400, 48, 48)
    np.testing.assert_array_equal(volume.array, largest.volume.array.astype(np.float32))
    assert volume.geometry.size == largest.volume.geometry.size
    np.testing.assert_allclose(volume.geometry.origin, largest.volume.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.spacing, largest.volume.geometry.spacing, atol=1e-4)
