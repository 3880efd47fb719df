"""Which SEG segments a reviewer's removed components stand for (results/correction.py)."""

from __future__ import annotations

import pytest

from neuroflow.results.correction import removed_segment_labels

CORE, OEDEMA, ENHANCING = "Necrotic and non-enhancing tumour core", "Peritumoural oedema", "Enhancing tumour"


@pytest.mark.parametrize(("components", "labels"), [
    (["ET"], {ENHANCING}),
    (["TC"], {CORE, ENHANCING}),  # the core holds the enhancing tumour
    (["WT"], {CORE, OEDEMA, ENHANCING, "Whole tumour (core not assessable)"}),
    (["oedema"], {OEDEMA}),
    (["Met 2"], {"Met 2"}),  # a lesion: the segment of its label
])
def test_a_removed_component_stands_for_the_segments_inside_it(components: list[str], labels: set[str]) -> None:
    assert removed_segment_labels(components) == labels
