"""Synthetic metastases in a real brain (issue 15's training and evaluation data): on a slab of Colin27
(Debian mricron-data), the lesions asked for are drawn where metastases lodge, of the size asked, enhancing
as their pattern says, with FLAIR oedema in the white matter, and the truth measures what was drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from neuroflow.devtools.dicom_writer import load_volume
from neuroflow.devtools.longitudinal_phantoms import COLIN27_T1, tissues_from_t1
from neuroflow.devtools.synthetic_metastases import (
    COLIN27_VESSELS,
    Background,
    MetastasisSpec,
    SyntheticMetastases,
    add_enhancing_vessels,
    colin27_background,
    insert_metastases,
    random_case,
    random_specs,
    write_case,
)

pytestmark = pytest.mark.skipif(not COLIN27_T1.is_file(), reason="Colin27 (Debian mricron-data) not installed")

SPECS = (
    MetastasisSpec(2.5),
    MetastasisSpec(5.0, "solid"),
    MetastasisSpec(9.0, "ring", oedema_mm=6.0),
    MetastasisSpec(16.0, "necrotic", haemorrhagic=True, oedema_mm=10.0),
)


@pytest.fixture(scope="module")
def background() -> Background:
    return colin27_background(axial_slices=(85, 125))  # above the ventricles' floor: cortex and white matter


@pytest.fixture(scope="module")
def drawn(background: Background) -> SyntheticMetastases:
    return insert_metastases(background, SPECS, seed=3)


def test_each_metastasis_asked_for_is_drawn_largest_first_at_its_size(drawn: SyntheticMetastases) -> None:
    assert [t.number for t in drawn.truth] == [1, 2, 3, 4]
    assert [t.spec.diameter_mm for t in drawn.truth] == [16.0, 9.0, 5.0, 2.5]
    assert int(drawn.labels.array.max()) == 4
    for t in drawn.truth:
        assert t.longest_axial_diameter_mm == pytest.approx(t.spec.diameter_mm, abs=max(1.5, 0.3 * t.spec.diameter_mm))
        if t.spec.diameter_mm >= 8.0:  # lobulated and cut by the brain's surface, but about a sphere
            sphere = 4.0 / 3.0 * np.pi * (t.spec.diameter_mm / 2.0) ** 3
            assert t.volume_mm3 == pytest.approx(sphere, rel=0.4)


def test_metastases_lie_in_the_brain_next_to_grey_matter(background: Background,
                                                         drawn: SyntheticMetastases) -> None:
    brain = background.brain_mask.array > 0
    grey = tissues_from_t1(background.t1ce, brain).grey
    to_grey = ndimage.distance_transform_edt(~grey)
    for t in drawn.truth:
        lesion = drawn.labels.array == t.number
        assert brain[lesion].all()
        assert float(to_grey[lesion].min()) <= 3.0, t  # at the junction or in the cortex
        assert t.site in ("grey-white junction", "cortical")


def test_enhancement_follows_the_pattern_and_haemorrhage_is_dark_on_flair(background: Background,
                                                                         drawn: SyntheticMetastases) -> None:
    brain = background.brain_mask.array > 0
    white = tissues_from_t1(background.t1ce, brain).white
    t1_white = float(np.median(background.t1ce.array[white]))
    flair_white = float(np.median(background.flair.array[white]))
    by_size = {t.spec.diameter_mm: t for t in drawn.truth}
    solid = drawn.labels.array == by_size[5.0].number
    assert float(np.median(drawn.t1ce.array[solid])) > 1.25 * t1_white
    ring = drawn.labels.array == by_size[9.0].number
    centre = ndimage.binary_erosion(ring, iterations=2)  # the rim is 1-2 mm thick on a 4.5 mm radius
    rim = ring & ~ndimage.binary_erosion(ring, iterations=1)
    assert centre.any()
    assert float(drawn.t1ce.array[centre].mean()) < 0.8 * float(drawn.t1ce.array[rim].mean())
    bleed = ndimage.binary_erosion(drawn.labels.array == by_size[16.0].number, iterations=4)
    assert float(np.median(drawn.flair.array[bleed])) < flair_white


def test_oedema_is_flair_bright_white_matter_around_the_lesion(background: Background,
                                                              drawn: SyntheticMetastases) -> None:
    brain = background.brain_mask.array > 0
    tissues = tissues_from_t1(background.t1ce, brain)
    oedema = drawn.oedema.array > 0
    assert oedema.sum() > 200
    assert not (oedema & (drawn.labels.array > 0)).any()
    assert float(np.median(drawn.flair.array[oedema])) > 1.3 * float(np.median(background.flair.array[tissues.white]))
    assert float(tissues.grey[oedema].mean()) < 0.2  # vasogenic oedema spares the cortex


def test_the_rest_of_the_brain_is_left_as_it_was(background: Background, drawn: SyntheticMetastases) -> None:
    # The soft edges (partial volume, oedema blur) reach 3 voxels along each axis, so up to ~5.2 diagonally.
    touched = ndimage.binary_dilation((drawn.labels.array > 0) | (drawn.oedema.array > 0), iterations=6)
    np.testing.assert_array_equal(drawn.t1ce.array[~touched], background.t1ce.array[~touched])
    np.testing.assert_array_equal(drawn.flair.array[~touched], background.flair.array[~touched])


def test_random_specs_span_2_to_40_mm_and_a_diameter_outside_is_refused(background: Background) -> None:
    specs = random_specs(np.random.default_rng(0), 200)
    diameters = [s.diameter_mm for s in specs]
    assert 2.0 <= min(diameters) < 3.0 and 30.0 < max(diameters) <= 40.0
    assert {s.pattern for s in specs} == {"solid", "ring", "necrotic"} and any(s.haemorrhagic for s in specs)
    assert np.median(diameters) < 12.0  # small lesions are the common ones
    with pytest.raises(ValueError, match=r"outside 2\.0-40\.0 mm"):
        insert_metastases(background, [MetastasisSpec(45.0)])


def test_a_random_case_is_reproducible_from_its_seed_and_written_with_its_geometry(
        background: Background, tmp_path: Path) -> None:
    case = random_case(background, seed=11, count=(2, 3))
    again = random_case(background, seed=11, count=(2, 3))
    np.testing.assert_array_equal(case.t1ce.array, again.t1ce.array)
    assert case.truth == again.truth and 2 <= len(case.truth) <= 3
    paths = write_case(case, tmp_path)
    labels = load_volume(tmp_path / "labels.nii.gz")
    assert labels.geometry.is_close(case.labels.geometry)
    np.testing.assert_array_equal(labels.array, case.labels.array)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert [t["number"] for t in truth] == [t.number for t in case.truth] and len(paths) == 5


def test_a_case_in_colin27_gets_its_enhancing_veins_unless_told_otherwise(background: Background) -> None:
    case = random_case(background, seed=5, count=(1, 1))
    explicit = random_case(background, seed=5, count=(1, 1), vessels=COLIN27_VESSELS)
    bare = random_case(background, seed=5, count=(1, 1), vessels=(0, 0))
    np.testing.assert_array_equal(case.t1ce.array, explicit.t1ce.array)
    assert (case.t1ce.array > bare.t1ce.array).sum() > 100


def test_enhancing_vessels_brighten_only_the_t1ce_in_thin_unlabelled_strands(background: Background) -> None:
    with_vessels = add_enhancing_vessels(background, count=20, seed=4)
    changed = with_vessels.t1ce.array != background.t1ce.array
    assert changed.sum() > 200
    np.testing.assert_array_equal(with_vessels.flair.array, background.flair.array)
    # Pial veins may lie just outside the brain mask (paths reach 2 voxels beyond it, tubes 1.5 mm around them).
    assert not (changed & ~ndimage.binary_dilation(background.brain_mask.array > 0, iterations=4)).any()
    white = tissues_from_t1(background.t1ce, background.brain_mask.array > 0).white
    bright = with_vessels.t1ce.array > 1.3 * float(np.median(background.t1ce.array[white]))
    strands = bright & changed
    # Thin: hardly anything survives an erosion by one voxel (a lesion of the same brightness would).
    assert ndimage.binary_erosion(strands).sum() < 0.1 * strands.sum()
