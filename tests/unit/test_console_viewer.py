"""The console viewer's own logic, without servers: what the browser receives keeps the patient's left on the
left (image and SEG labels alike), which panes a study and a longitudinal pair open, and a missing front-end
build is refused with the command that builds it."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from neuroflow.console.viewer.bundle import ViewerBundleMissing, bundle_dir
from neuroflow.console.viewer.layout import NothingToShow, change_panes, study_panes
from neuroflow.console.viewer.nifti import nifti_gz
from neuroflow.console.viewer.seg_labels import seg_label_volume, segment_colours
from neuroflow.console.viewer.study_images import SegEntry, SeriesEntry
from neuroflow.core.labels import MS_NEW_LESION_SEGMENT
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_volumes
from tests.viewer_study import MARKER, write_viewer_study


def _nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def _ras_of(image: nib.Nifti1Image, voxels: np.ndarray) -> np.ndarray:
    return np.asarray(nib.affines.apply_affine(image.affine, voxels))


def test_a_marker_on_the_patients_left_is_on_the_left_in_the_image_and_the_seg_labels(tmp_path: Path) -> None:
    study = write_viewer_study(tmp_path)
    followup = [pydicom.dcmread(p) for p in study.files if "followup" in str(p)]
    volume = series_volumes(followup, study_key="viewer-test")[0]
    image = _nifti(nifti_gz(volume))
    seg = pydicom.dcmread(study.files[-1])
    labels = _nifti(nifti_gz(seg_label_volume(seg, volume.geometry)))

    bright = np.argwhere(np.asarray(image.dataobj) > 600)  # the marker, in the file's (i, j, k) voxels
    labelled = np.argwhere(np.asarray(labels.dataobj) > 0)
    assert len(bright) == 3 * 8 * 8
    # NIfTI is RAS: the patient's left is negative x. The writer put the marker at +30..+51 mm LPS x.
    ras = _ras_of(image, bright)
    assert (ras[:, 0] < 0).all() and ras[:, 0].min() == pytest.approx(-51.0) and ras[:, 0].max() == pytest.approx(-30.0)
    # The labels lie on exactly the marker's voxels, in the same space.
    np.testing.assert_allclose(labels.affine, image.affine)
    assert {tuple(v) for v in labelled} == {tuple(v) for v in bright}
    # and in the volume's own (LPS) terms: the marker slab of the converted series
    assert volume.array[MARKER].min() > 600


def test_seg_colours_are_the_projects_segment_colours(tmp_path: Path) -> None:
    study = write_viewer_study(tmp_path)
    (colour,) = segment_colours(pydicom.dcmread(study.files[-1]))
    assert colour.number == MS_NEW_LESION_SEGMENT.number
    assert all(abs(a - b) <= 2 for a, b in zip(colour.rgb, MS_NEW_LESION_SEGMENT.rgb, strict=True))


def _series(key: str, role: SeriesRole, description: str, number: int) -> SeriesEntry:
    return SeriesEntry(key, number, description, str(role), 12)


T1 = _series("a" * 12, SeriesRole.T1, "t1_mprage", 2)
FLAIR = _series("b" * 12, SeriesRole.FLAIR, "t2_flair", 3)
SEG = SegEntry("c" * 12, "AI new lesions", FLAIR.key, ())
PRIOR_FLAIR = _series("d" * 12, SeriesRole.FLAIR, "FLAIR 3D", 5)
PRIOR_T1 = _series("e" * 12, SeriesRole.T1, "t1_mprage", 4)


def test_a_study_opens_its_seg_on_the_series_it_was_drawn_on() -> None:
    (pane,) = study_panes("f" * 12, [T1, FLAIR], [SEG])
    assert (pane.series, pane.seg) == (FLAIR, SEG)
    (plain,) = study_panes("f" * 12, [T1, FLAIR], [])
    assert (plain.series, plain.seg) == (T1, None)
    (picked,) = study_panes("f" * 12, [T1, FLAIR], [SEG], series_key=T1.key)
    assert (picked.series, picked.seg) == (T1, None)
    with pytest.raises(NothingToShow, match="no segmentation 999999999999"):
        study_panes("f" * 12, [T1, FLAIR], [SEG], seg_key="9" * 12)


def test_a_longitudinal_pair_opens_baseline_followup_and_change_of_one_role() -> None:
    panes = change_panes("f" * 12, [T1, FLAIR], [SEG], "0" * 12, [PRIOR_T1, PRIOR_FLAIR])
    assert [p.id for p in panes] == ["baseline", "followup", "change"]
    assert [(p.study_key, p.series, p.seg) for p in panes] == [
        ("0" * 12, PRIOR_FLAIR, None), ("f" * 12, FLAIR, None), ("f" * 12, FLAIR, SEG)]
    with pytest.raises(NothingToShow, match="no series like the follow-up's series 3 t2_flair"):
        change_panes("f" * 12, [T1, FLAIR], [SEG], "0" * 12, [PRIOR_T1])


def test_a_console_without_the_built_front_end_is_told_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(ViewerBundleMissing, match="make viewer-bundle"):
        bundle_dir(tmp_path)


def test_whole_scanner_values_travel_as_int16_and_fractions_as_they_are() -> None:
    from neuroflow.core.volume import Geometry, Volume

    grid = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (4, 3, 2))
    whole = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4) * 100 - 1000, grid)
    sent = _nifti(nifti_gz(whole))
    assert sent.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(sent.dataobj).transpose(2, 1, 0), whole.array)
    fraction = whole.with_array(whole.array + np.float32(0.5))
    assert _nifti(nifti_gz(fraction)).get_data_dtype() == np.float32


def test_the_consoles_refusal_is_the_answer_and_nothing_of_the_study_is_read(tmp_path: Path) -> None:
    import asyncio
    from typing import Any

    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from neuroflow.console.viewer.routes import viewer_routes

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the study was read ({name}) although the console refused the request")

    async def refuse(request: Request, study_key: str) -> Response | None:
        return PlainTextResponse(f"refused {study_key}", status_code=403)

    (tmp_path / "viewer.js").write_text("")
    routes = viewer_routes(Untouchable(), authorize=refuse, static_dir=tmp_path)  # type: ignore[arg-type]
    key = "a1" * 6
    params = {"study_key": key, "series_key": "b2" * 6, "seg_key": "c3" * 6}
    for route in routes:
        assert isinstance(route, Route)
        if route.name == "viewer_static":
            continue
        request = Request({"type": "http", "method": "GET", "path": route.path, "query_string": b"", "headers": [],
                           "path_params": {name: params[name] for name in route.param_convertors}})
        answer = asyncio.run(route.endpoint(request))
        assert (answer.status_code, answer.body) == (403, f"refused {key}".encode()), route.name
