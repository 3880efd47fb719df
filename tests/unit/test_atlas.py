"""Atlas locations: names from AAL, Harvard-Oxford and JHU (mricron-data) on the right side of the brain,
whatever order the patient's voxels are stored in."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflow.core.atlas import (
    HARVARD_OXFORD_CORTICAL,
    TEMPLATE_BRAIN,
    attach_transform,
    brain_to_template,
    default_locator,
    load_atlases,
    locations,
    read_label_image,
    transform_of,
)
from neuroflow.core.errors import StudyError
from neuroflow.core.volume import Geometry, Volume


def test_atlases_carry_their_names_and_harvard_oxford_sits_on_the_template() -> None:
    aal, ho, jhu = load_atlases()
    assert len(aal.names) == 116 and aal.names[1] == "Precentral_L"
    assert len(HARVARD_OXFORD_CORTICAL) == 48 and int(ho.labels.array.max()) == 48
    assert jhu.names[3] == "Genu_of_corpus_callosum"
    # The Harvard-Oxford file's qform is off by 126 mm: read by its sform, its cortex lies on Colin27's brain.
    assert ho.labels.geometry.origin == pytest.approx((-90.0, 126.0, -72.0))


@pytest.mark.parametrize(("point", "expected"), [
    ((38.0, 20.0, 50.0), ("_L (AAL)", ", left (Harvard-Oxford)")),  # LPS x > 0: the patient's left
    ((-38.0, 20.0, 50.0), ("_R (AAL)", ", right (Harvard-Oxford)")),
    ((25.0, 5.0, 30.0), ("left (JHU)",)),
    ((-25.0, 5.0, 30.0), ("right (JHU)",)),
])
def test_a_template_point_is_named_with_the_side_it_is_on(point: tuple[float, float, float],
                                                         expected: tuple[str, ...]) -> None:
    name = default_locator().name_at(point)
    assert all(part in name for part in expected), name


def test_locations_do_not_depend_on_how_the_patient_volume_is_stored() -> None:
    """Colin27's own brain as the patient, once as stored and once with its i axis reversed (same
    anatomy, same patient coordinates): the same points get the same names."""
    brain = read_label_image(TEMPLATE_BRAIN)
    brain = brain.with_array(brain.array.astype(np.float32))
    g = brain.geometry
    direction = np.asarray(g.direction).reshape(3, 3).copy()
    last = g.index_to_patient() @ np.array([g.size[0] - 1, 0, 0, 1.0])
    direction[:, 0] *= -1.0
    mirrored = Volume(np.ascontiguousarray(brain.array[:, :, ::-1]),
                      Geometry(g.spacing, (float(last[0]), float(last[1]), float(last[2])),
                               tuple(float(d) for d in direction.ravel()), g.size))
    points = [(38.0, 20.0, 50.0), (-38.0, 20.0, 50.0), (25.0, 5.0, 30.0)]
    locator = default_locator()
    as_stored = locator.locate(brain, points, study_key="k")
    reversed_ = locator.locate(mirrored, points, study_key="k")
    assert as_stored == reversed_
    assert "_L (AAL)" in as_stored[0] and "_R (AAL)" in as_stored[1]


def test_a_z_scored_brain_registers_and_its_transform_travels_in_a_volumes_meta() -> None:
    """The metastases pipeline registers the normalised T1CE (z-scores: half the brain below zero) inside the
    brain mask, and hands the transform to the results stage in the probability volume's meta."""
    brain = read_label_image(TEMPLATE_BRAIN)
    values = brain.array.astype(np.float32)
    mask = brain.with_array((values > 0).astype(np.uint8))
    inside = values[values > 0]
    z_scored = brain.with_array(np.where(values > 0, (values - inside.mean()) / inside.std(), 0.0).astype(np.float32))
    transform = brain_to_template(z_scored, mask, study_key="k")
    carrier = attach_transform(mask, transform)
    travelled = transform_of(carrier)
    assert travelled is not None and transform_of(mask) is None
    point = (38.0, 20.0, 50.0)
    assert travelled.TransformPoint(point) == pytest.approx(transform.TransformPoint(point))
    # Colin27 onto itself: about the identity, so the points keep their side.
    assert np.linalg.norm(np.subtract(travelled.TransformPoint(point), point)) < 4.0
    left, right = locations(travelled, [point, (-38.0, 20.0, 50.0)])
    assert "_L (AAL)" in left and "_R (AAL)" in right
    with pytest.raises(StudyError, match="brain mask"):
        brain_to_template(z_scored, mask.with_array(np.zeros_like(mask.array)), study_key="k")
