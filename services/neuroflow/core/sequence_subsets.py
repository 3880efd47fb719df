"""Studies that lack some of the glioma model's input sequences. The one place that says:

* which subsets of its input roles a model takes (:class:`PipelineInputs`, from the model card's
  ``input_roles`` and ``min_roles_any``): routing in both runtimes and the segmentation stage ask it;
* which series the others are registered onto when the usual reference is missing
  (:data:`~neuroflow.core.roles.GLIOMA_REFERENCE_ORDER`, :func:`glioma_reference_role`);
* which tumour sub-regions the sequences at hand can show (:func:`not_assessable`): the report and the SEG
  follow it.

A model card whose ``min_roles_any`` is empty was trained on complete studies: every input role is required
and a study without one is refused, as before. A card that names roles there was trained with sequence
dropout: a study qualifies with any subset of the input roles holding at least one of them, and each missing
role is fed to the network as an all-zero channel after z-scoring (the value dropout trained it on).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from neuroflow.core.labels import TumourRegion
from neuroflow.core.model_card import ModelCard
from neuroflow.core.roles import GLIOMA_REFERENCE_ORDER, SeriesRole


@dataclass(frozen=True)
class PipelineInputs:
    """The series roles a pipeline takes, in its model's channel order, and which of them a study must have.
    ``at_least_one_of`` empty: every role is required. Otherwise any subset of ``roles`` holding at least one
    of ``at_least_one_of`` qualifies, the others being fed as zero channels."""

    roles: tuple[SeriesRole, ...]
    at_least_one_of: tuple[SeriesRole, ...] = ()

    def __post_init__(self) -> None:
        outside = [r.value for r in self.at_least_one_of if r not in self.roles]
        if outside:
            raise ValueError(f"roles {outside} a study needs one of are not among the inputs "
                             f"{[r.value for r in self.roles]}")

    @classmethod
    def of_card(cls, card: ModelCard) -> PipelineInputs:
        """What ``card`` says its model takes. Refuses (ValueError) a ``min_roles_any`` naming a role the
        model does not take, or a role neuroflow does not know."""
        try:
            return cls(tuple(SeriesRole(r) for r in card.input_roles),
                       tuple(SeriesRole(r) for r in card.min_roles_any))
        except ValueError as exc:
            raise ValueError(f"model card {card.name}:{card.version}: {exc}") from exc

    @property
    def accepts_subsets(self) -> bool:
        return bool(self.at_least_one_of)

    def qualifies(self, present: Collection[SeriesRole]) -> bool:
        """Whether a study holding the roles ``present`` can be run."""
        if not self.accepts_subsets:
            return all(r in present for r in self.roles)
        return any(r in present for r in self.at_least_one_of)

    def missing(self, present: Collection[SeriesRole]) -> tuple[SeriesRole, ...]:
        """The input roles not in ``present``, in channel order (fed as zero channels when allowed)."""
        return tuple(r for r in self.roles if r not in present)


def glioma_reference_role(present: Iterable[SeriesRole]) -> SeriesRole:
    """The series every other one is registered onto and the SEG is drawn on: the first role of
    :data:`GLIOMA_REFERENCE_ORDER` that ``present`` holds. ValueError when it holds none."""
    have = set(present)
    for role in GLIOMA_REFERENCE_ORDER:
        if role in have:
            return role
    raise ValueError(f"none of the glioma reference roles {[r.value for r in GLIOMA_REFERENCE_ORDER]} is present")


# What each sub-region is read on (the BraTS annotation protocol): enhancing tumour is the enhancement on T1
# post-contrast, and the tumour core is bounded by it (the enhancing rim and the necrosis within), so both
# need T1CE; the whole tumour is the extent of the FLAIR hyperintensity, cross-checked on T2, so either one
# shows it (T2 alone is less sensitive at the cortex and ventricles; still the protocol's second source).
REGION_SEQUENCES: dict[TumourRegion, tuple[tuple[SeriesRole, ...], str]] = {
    TumourRegion.WT: ((SeriesRole.FLAIR, SeriesRole.T2),
                      "the whole tumour (oedema and infiltration) cannot be assessed without FLAIR or T2"),
    TumourRegion.TC: ((SeriesRole.T1CE,), "the tumour core cannot be assessed without T1 post-contrast"),
    TumourRegion.ET: ((SeriesRole.T1CE,), "enhancing tumour cannot be assessed without T1 post-contrast"),
}


def not_assessable(present: Collection[SeriesRole]) -> dict[str, str]:
    """Sub-region (WT, TC, ET) -> why the sequences ``present`` cannot show it; empty when they show all."""
    return {region.value: why for region, (needs, why) in REGION_SEQUENCES.items()
            if not any(r in present for r in needs)}
