"""What a stage leaves for later stages beside its volumes, written once here because the stages live in
different services (a service imports the core, never another service).

Preprocessing knows things the results stage needs for the SEG and the report: the reference series'
own geometry (the SEG is drawn on it), the registration and orientation checks, the brain volume and the
time each step took. It writes them as a :class:`PreprocessSummary`, JSON in the ``meta`` of the brain
mask it stores; segmentation copies that meta onto the label map (which lies on the same grid), so the
results stage finds it on the one volume it reads. Large data stays in the volume store; messages carry
only references.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from neuroflow.core.volume import Geometry, Volume

# Key of the summary in a stored volume's meta.
SUMMARY_META_KEY = "neuroflow.preprocess_summary"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeometrySummary(_Model):
    """A :class:`neuroflow.core.volume.Geometry` as JSON (doubles round-trip exactly through JSON)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    size: tuple[int, int, int]

    @classmethod
    def of(cls, geometry: Geometry) -> GeometrySummary:
        return cls(spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction,
                   size=geometry.size)

    def geometry(self) -> Geometry:
        return Geometry(spacing=self.spacing, origin=self.origin, direction=self.direction, size=self.size)


# Below this Dice of their outlines (preprocess.register.outline_agreement) two sequences of one session are not
# aligned: measured 0.98 after a good registration of a skull-stripped T2, 0.79-0.83 after ones 10-15 mm off.
OUTLINE_AGREEMENT_MIN = 0.9


class RegistrationSummary(_Model):
    """How one moving series was registered onto the reference (see preprocess.register)."""

    metric: float  # final Mattes mutual information of the optimiser
    nmi: float  # normalised mutual information with the reference after registration
    nmi_before: float  # ... and before
    # Dice of the series' outline with the reference's after registration (preprocess.register.outline_agreement):
    # the figure that tells a failed registration, where NMI hardly moves. None from a preprocess stage before it.
    outline_dice: float | None = None
    attempts: int = 1  # 2: the outlines disagreed after the first start, and the registration started again

    @property
    def misaligned(self) -> bool:
        return self.outline_dice is not None and self.outline_dice < OUTLINE_AGREEMENT_MIN

    def misalignment(self, role: str) -> str:
        """The words of a registration that left the series' outline disagreeing with the reference's."""
        return (f"{role} is not aligned with the reference series (outline Dice {self.outline_dice:.2f} after "
                f"registration, under {OUTLINE_AGREEMENT_MIN}): the segmentation saw misaligned sequences; review "
                "the overlay")


class OrientationSummary(_Model):
    """The left/right check of one series against the reference (see preprocess.orientation)."""

    verdict: str  # "consistent", "undecided" ("flipped" never gets this far: the study is refused)
    nmi_as_is: float
    nmi_mirrored: float


class PreprocessSummary(_Model):
    """Everything preprocessing learnt that the report and the SEG need, by role value ("T1CE", ...)."""

    reference_geometry: GeometrySummary
    registration: dict[str, RegistrationSummary] = Field(default_factory=dict)
    orientation: dict[str, OrientationSummary] = Field(default_factory=dict)
    brain_volume_ml: float = Field(ge=0.0)
    skull_strip_method: str = ""
    # A post-operative study: what became of its prior's tumour (CavityFinding.prior_tumour), for the
    # segmentation stage that carves the cavity; the tumour itself travels as its own volume.
    prior_tumour: str = ""
    timings_s: dict[str, float] = Field(default_factory=dict)  # step -> seconds, in the order they ran

    def attach(self, volume: Volume) -> Volume:
        """``volume`` with this summary in its meta (a copy; the original is unchanged)."""
        return Volume(volume.array, volume.geometry, {**volume.meta, SUMMARY_META_KEY: self.model_dump_json()})

    @classmethod
    def of(cls, volume: Volume) -> PreprocessSummary:
        """The summary a stage attached to ``volume``; ValueError naming the key when there is none."""
        text = volume.meta.get(SUMMARY_META_KEY)
        if text is None:
            raise ValueError(f"volume carries no {SUMMARY_META_KEY!r} in its meta: it was not written by "
                             "the preprocess stage (or a stage dropped its meta)")
        return cls.model_validate_json(text)

    def with_timings(self, timings_s: dict[str, float]) -> PreprocessSummary:
        """A copy with ``timings_s`` added (later stages append their own steps)."""
        return self.model_copy(update={"timings_s": {**self.timings_s, **timings_s}})


# Key of the segmentation's review (failure flag) in the label map's meta.
REVIEW_META_KEY = "neuroflow.review"


class ReviewSummary(BaseModel):
    """The segmentation's failure flag as it travels to the results stage, JSON in the label map's meta beside
    the preprocess summary. The results stage turns it into the report's ``ReviewAssessment``.

    Unknown keys are ignored, not refused: a newer segmentation service may add figures, and a results
    service of the previous release must still read the flag (a label map without the key: not assessed)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    alarms: list[str] = Field(default_factory=list)  # one readable line per check that disagreed
    disagreement: dict[str, float] = Field(default_factory=dict)  # measure -> value
    method: str = ""
    threshold: int = Field(default=0, ge=0)

    @property
    def risk_score(self) -> int:
        """The number of alarms."""
        return len(self.alarms)

    @property
    def needs_review(self) -> bool:
        return self.risk_score > self.threshold

    def attach(self, volume: Volume) -> Volume:
        """``volume`` with this review in its meta (a copy)."""
        return Volume(volume.array, volume.geometry, {**volume.meta, REVIEW_META_KEY: self.model_dump_json()})

    @classmethod
    def of(cls, volume: Volume) -> ReviewSummary | None:
        """The review attached to ``volume``; None when the segmentation did not assess it."""
        text = volume.meta.get(REVIEW_META_KEY)
        return None if text is None else cls.model_validate_json(text)


# Key of the post-operative cavity finding in the label map's meta (glioma_postop only).
CAVITY_META_KEY = "neuroflow.postoperative"


class CavityFinding(BaseModel):
    """How the segmentation stage of a post-operative study (``glioma_postop``) found the resection cavity,
    JSON in the label map's meta beside the review: the label map itself holds the cavity
    (core.labels.RESECTION_CAVITY_LABEL), so the results stage measures it there; this says why the study was
    taken as post-operative, how the cavity was located and what the tumour segmentation lost to it.
    Unknown keys are ignored (a newer segmentation service may add figures)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    evidence: list[str] = Field(default_factory=list)  # why the study is post-operative, one line each
    assessable: bool = True  # False: the sequences cannot show fluid (neither FLAIR nor T2)
    why_not: str = ""  # when not assessable
    located_by: str = ""  # "tumour bed", "prior tumour", "largest non-ventricular fluid region", "none found"
    # What became of the prior study's tumour (preprocess/prior_bed.py): placed on this study, or why not; empty:
    # no prior with tumour was known.
    prior_tumour: str = ""
    tumour_removed_ml: float = Field(default=0.0, ge=0.0)  # tumour the model drew inside the cavity, removed
    method: str = ""  # the rules and their thresholds, in words

    def attach(self, volume: Volume) -> Volume:
        """``volume`` with this finding in its meta (a copy)."""
        return Volume(volume.array, volume.geometry, {**volume.meta, CAVITY_META_KEY: self.model_dump_json()})

    @classmethod
    def of(cls, volume: Volume) -> CavityFinding | None:
        """The finding attached to ``volume``; None for a label map of a study not taken as post-operative."""
        text = volume.meta.get(CAVITY_META_KEY)
        return None if text is None else cls.model_validate_json(text)
