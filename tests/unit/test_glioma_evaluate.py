"""models/glioma_unet/evaluate.py's test-time augmentation: a mirrored member is mirrored back onto the plain
prediction's grid before the members are averaged. The backend is a small in-test implementation of our own
interface whose output is a function of its input only, so a correct mirror member equals the plain one."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from models.glioma_unet.evaluate import _window
from neuroflow.core.inference import Array, InferenceBackend
from neuroflow.core.model_card import ModelRef

MODEL = ModelRef(name="glioma_unet", version=4)


class ChannelLogits(InferenceBackend):
    """Region logits = the first three input channels: equivariant to any mirror of the patch."""

    def ready(self, model: ModelRef) -> bool:
        return True

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        (image,) = inputs.values()
        return {"logits": np.ascontiguousarray(image[:, :3], dtype=np.float32)}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_mirrored_member_lands_on_the_plain_members_grid(axis: int) -> None:
    stack = np.random.default_rng(axis).standard_normal((4, 20, 24, 28)).astype(np.float32)
    plain = _window(stack, ChannelLogits(), MODEL, 16, 0.5, ())
    mirrored = _window(stack, ChannelLogits(), MODEL, 16, 0.5, (axis,))
    np.testing.assert_allclose(mirrored, plain, atol=1e-6)
    # Not flipped back, it would be the mirror image: an asymmetric input tells the two apart.
    assert not np.allclose(np.flip(mirrored, axis=1 + axis), plain, atol=1e-3)
