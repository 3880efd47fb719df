"""A result a radiologist accepts with a component removed is corrected in the PACS, against a real site Orthanc
and a real destination PACS Orthanc: the delivery loop that delivered the result builds (from what the site holds)
a SEG without the removed segment and an SR superseding the earlier one, sends them once, and keeps the corrected
SEG as training data with its provenance and without the patient's identity. A second review corrects the
original again and supersedes the first correction; rejected afterwards, the result is retracted there: the
notice supersedes every correction as well as the originals. (A correction not sent when the result is rejected
is withheld: tests/integration/test_console_browser.py, tests/unit/test_delivery_supersession.py.)"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.delivery import DeliveryLoop
from neuroflow.core.model_card import ModelRef
from neuroflow.core.orthanc import OrthancDicomSink
from neuroflow.core.reviews import Decision, ReviewDecision, SqliteReviewStore
from neuroflow.core.state import SqliteStateStore
from neuroflow.core.state_schedules import DeliveryStatus, correction_workflow_id
from neuroflow.core.volume import Geometry, Volume
from neuroflow.results.correction import (
    CORRECTED_PREFIX,
    CORRECTION_IMAGE_DESCRIPTION,
    Corrector,
    TrainingStore,
)
from neuroflow.results.dicom_seg import build_glioma_seg
from neuroflow.results.dicom_sr import CORRECTION_SR_DESCRIPTION, RETRACTION_SR_DESCRIPTION, sr_texts
from neuroflow.results.notice import NOTHING_FOUND_HEADLINE, Notice, notice_image, notice_objects
from neuroflow.results.report import ReportStatus, StudyReport
from neuroflow.results.retraction import RETRACTION_IMAGE_DESCRIPTION, Retractor
from tests.integration.test_delivery_outbox import SETTINGS, a_result
from tests.servers.orthanc import PACS_MODALITY, site_and_pacs

OBJECTS = ResultObjectSettings()
KEY = "k-correct"
# The grid of tests.integration.test_delivery_outbox.a_result's one slice.
OVERLAY = "AI overlay on T1CE (stand-in)"  # drawn from the uncorrected SEG
GEOMETRY = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), size=(16, 16, 1))


def _referenced(sequence: Any) -> list[str]:
    return [r.ReferencedSOPInstanceUID for s in sequence for series in s.ReferencedSeriesSequence
            for r in series.ReferencedSOPSequence]


def test_a_result_accepted_with_a_component_removed_reaches_the_pacs_corrected_and_a_rejection_retracts_it_all(
        tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state" / "workflows.sqlite")
    reviews = SqliteReviewStore(tmp_path / "state" / "workflows.sqlite")
    with site_and_pacs(tmp_path / "orthanc", name="correction", site_aet="NFCORRECT", pacs_aet="CORRECTPACS",
                       scu_timeout_s=5) as pair:
        sink = OrthancDicomSink(pair.site_client)
        image = a_result(tmp_path / "study")
        sink.store(image)
        labels = np.zeros((1, 16, 16), dtype=np.uint8)  # core, oedema and enhancing tumour in three bands
        labels[0, 2:5], labels[0, 6:9], labels[0, 10:13] = 1, 2, 3
        seg = build_glioma_seg(Volume(labels, GEOMETRY), [image],
                               model=ModelRef(name="glioma-seg", version=3), input_hash="h-correct", objects=OBJECTS)
        assert seg is not None
        report = StudyReport(study_instance_uid=str(image.StudyInstanceUID), study_key=KEY, pipeline="glioma",
                             status=ReportStatus.SUCCEEDED)
        (earlier_sr,) = notice_objects(report, Notice(NOTHING_FOUND_HEADLINE, ("stand-in for the glioma SR",)),
                                       [image], input_hash="h-correct", objects=OBJECTS)["notice_sr.dcm"]
        overlay = notice_image(image, Notice("stand-in for an overlay", ("drawn before the review",)),
                               input_hash="h-overlay", objects=OBJECTS)
        overlay.SeriesDescription = OVERLAY
        result_uids = [sink.store(seg), sink.store(earlier_sr), sink.store(overlay)]
        now = time.time()
        store.create("wf-correct", KEY, "glioma", "h-correct")
        store.enqueue_delivery("wf-correct", PACS_MODALITY, study_key=KEY, pipeline="glioma", stage="results",
                               sop_instance_uids=result_uids, now=now, give_up_at=now + SETTINGS.retry_for_s)
        training = TrainingStore(tmp_path / "training")
        loop = DeliveryLoop(store, sink, SETTINGS, holder="replica-1", retract=Retractor(sink, OBJECTS),
                            correct=Corrector(sink, reviews, OBJECTS, training, reached=store.reached_objects),
                            reviews=reviews)
        assert loop.deliver_due() == 1  # the result reached the PACS

        review = reviews.record(ReviewDecision(
            study_key=KEY, workflow_id="wf-correct", pipeline="glioma", model="glioma-seg/3",
            decision=Decision.ACCEPTED, quality=4, reviewer="rad", removed_components=["ET"]))
        assert store.request_corrections("wf-correct", review.review_id, now=time.time(),
                                         give_up_at=time.time() + 600) == [PACS_MODALITY]
        assert loop.deliver_due() == 1
        assert loop.deliver_due(time.time() + 3600) == 0  # sent once
        in_pacs = [pydicom.dcmread(io.BytesIO(pair.pacs_client.instance_file(i)))
                   for i in pair.pacs_client.get_json("/instances")]

        # A second review removes the tumour core as well: the original is corrected again.
        later = reviews.record(ReviewDecision(
            study_key=KEY, workflow_id="wf-correct", pipeline="glioma", model="glioma-seg/3",
            decision=Decision.ACCEPTED, quality=3, reviewer="rad", removed_components=["TC"]))
        assert store.request_corrections("wf-correct", later.review_id, now=time.time(),
                                         give_up_at=time.time() + 600) == [PACS_MODALITY]
        assert loop.deliver_due() == 1
        reviews.record(ReviewDecision(study_key=KEY, workflow_id="wf-correct", pipeline="glioma",
                                      model="glioma-seg/3", decision=Decision.REJECTED, quality=1, reviewer="rad2"))
        withheld, retracting = store.reject_result("wf-correct", "withheld: rejected", now=time.time(),
                                                   give_up_at=time.time() + 600)
        assert (withheld, retracting) == ([], [PACS_MODALITY])
        assert loop.deliver_due() == 1  # the retraction
        assert loop.deliver_due(time.time() + 3600) == 0
        after = {str(d.SOPInstanceUID): d for i in pair.pacs_client.get_json("/instances")
                 if (d := pydicom.dcmread(io.BytesIO(pair.pacs_client.instance_file(i))))}

    (correction,) = store.deliveries(workflow_id=correction_workflow_id("wf-correct", review.review_id))
    assert correction.status == DeliveryStatus.DELIVERED
    assert len(in_pacs) == 6  # the result's SEG, SR and overlay; the corrected SEG, the superseding SR, a notice
    (page,) = [d for d in in_pacs if d.get("SeriesDescription") == CORRECTION_IMAGE_DESCRIPTION]
    assert page.SOPClassUID == overlay.SOPClassUID and "overlays show removed components" in page.ImageComments
    (corrected,) = [d for d in in_pacs if d.SOPClassUID == SegmentationStorage
                    and str(d.SeriesDescription).startswith(CORRECTED_PREFIX)]
    assert [(int(s.SegmentNumber), str(s.SegmentLabel)) for s in corrected.SegmentSequence] == [
        (1, "Necrotic and non-enhancing tumour core"), (2, "Peritumoural oedema")]  # no enhancing tumour
    assert hd.seg.Segmentation.from_dataset(corrected).number_of_segments == 2  # a SEG a reader takes
    frames = corrected.pixel_array.reshape(-1, 16, 16)
    assert np.array_equal(frames[0], labels[0] == 1) and np.array_equal(frames[1], labels[0] == 2)
    (sr,) = [d for d in in_pacs if d.SOPClassUID == Comprehensive3DSRStorage
             and d.SeriesDescription == CORRECTION_SR_DESCRIPTION]
    predecessors = [r.ReferencedSOPInstanceUID for s in sr.PredecessorDocumentsSequence
                    for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence]
    assert predecessors == [earlier_sr.SOPInstanceUID]
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert corrected.SOPInstanceUID in evidence
    assert any(t.startswith("CORRECTED by radiologist review on ") and "removed ET (Enhancing tumour)" in t
               for t in sr_texts(sr))
    assert any(t.startswith(f"Superseded, do not use: {OVERLAY}") for t in sr_texts(sr))  # not redrawn

    kept = tmp_path / "training" / KEY / review.review_id
    provenance = json.loads((kept / "provenance.json").read_text())
    assert {k: provenance[k] for k in ("study_key", "model", "reviewer", "removed_components",
                                       "removed_segments")} == {
        "study_key": KEY, "model": "glioma-seg/3", "reviewer": "rad", "removed_components": ["ET"],
        "removed_segments": ["Enhancing tumour"]}
    training_seg = pydicom.dcmread(kept / "corrected_seg_1.dcm")
    assert training_seg.SOPInstanceUID == corrected.SOPInstanceUID and "PatientID" not in training_seg
    assert "PatientName" not in training_seg and str(image.PatientID) not in (kept / "provenance.json").read_text()

    # The second correction: a SEG of the oedema alone, its SR superseding the original's and the first correction's.
    assert len(after) == 11  # the six, the second corrected SEG, SR and page, the retraction SR and page
    (second_sr,) = [d for d in after.values() if d.get("SeriesDescription") == CORRECTION_SR_DESCRIPTION
                    and d.SOPInstanceUID != sr.SOPInstanceUID]
    assert set(_referenced(second_sr.PredecessorDocumentsSequence)) == {earlier_sr.SOPInstanceUID, sr.SOPInstanceUID}
    (second_seg,) = [d for d in after.values() if d.SOPClassUID == SegmentationStorage
                     and str(d.SeriesDescription).startswith(CORRECTED_PREFIX)
                     and d.SOPInstanceUID != corrected.SOPInstanceUID]
    assert [str(s.SegmentLabel) for s in second_seg.SegmentSequence] == ["Peritumoural oedema"]
    assert any(t.startswith(f"Superseded, do not use: {OVERLAY}; {corrected.SeriesDescription}")
               for t in sr_texts(second_sr))

    # The rejection: the retraction SR supersedes every object of the result in the PACS, corrections included.
    (retraction,) = [d for d in after.values() if d.SOPClassUID == Comprehensive3DSRStorage
                     and d.SeriesDescription == RETRACTION_SR_DESCRIPTION]
    assert any(d.SeriesDescription == RETRACTION_IMAGE_DESCRIPTION for d in after.values())
    delivered = set(after) - {str(retraction.SOPInstanceUID)} - {
        u for u, d in after.items() if d.get("SeriesDescription") == RETRACTION_IMAGE_DESCRIPTION}
    assert len(delivered) == 9 and set(_referenced(retraction.CurrentRequestedProcedureEvidenceSequence)) == delivered
    assert set(_referenced(retraction.PredecessorDocumentsSequence)) == {
        earlier_sr.SOPInstanceUID, sr.SOPInstanceUID, second_sr.SOPInstanceUID}
    store.close()
