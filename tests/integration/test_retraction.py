"""A result a radiologist rejects after it reached the PACS is retracted there, against a real site Orthanc
and a real destination PACS Orthanc: the delivery loop that delivered it sends a superseding notice (an SR
whose predecessor documents are the superseded SR and whose evidence names every superseded object, and a
page any viewer shows), exactly once, and the outbox records it sent; a PACS away when it is due delays
it and does not lose it."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
from pydicom.uid import Comprehensive3DSRStorage

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.delivery import DeliveryLoop
from neuroflow.core.orthanc import OrthancDicomSink
from neuroflow.core.state import SqliteStateStore
from neuroflow.core.state_schedules import DeliveryStatus
from neuroflow.devtools.orthanc_server import restart_orthanc
from neuroflow.results.dicom_sr import RETRACTION_SR_DESCRIPTION, sr_texts
from neuroflow.results.notice import NOTHING_FOUND_HEADLINE, Notice, notice_objects
from neuroflow.results.report import ReportStatus, StudyReport
from neuroflow.results.retraction import RETRACTION_IMAGE_DESCRIPTION, Retractor
from tests.integration.test_delivery_outbox import SETTINGS, a_result
from tests.servers.orthanc import PACS_MODALITY, site_and_pacs

OBJECTS = ResultObjectSettings()


def test_a_result_rejected_after_delivery_is_retracted_in_the_pacs_by_a_superseding_notice(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state" / "workflows.sqlite")
    with site_and_pacs(tmp_path / "orthanc", name="retraction", site_aet="NFRETRACT", pacs_aet="RETRACTPACS",
                       scu_timeout_s=5) as pair:
        sink = OrthancDicomSink(pair.site_client)
        image = a_result(tmp_path / "study")
        sink.store(image)
        report = StudyReport(study_instance_uid=str(image.StudyInstanceUID), study_key="k-retract",
                             pipeline="glioma", status=ReportStatus.SUCCEEDED)
        result = notice_objects(report, Notice(NOTHING_FOUND_HEADLINE, ("no tumour voxel",)), [image],
                                input_hash="h-retract", objects=OBJECTS)
        result_uids = [sink.store(d) for objects in result.values() for d in objects]
        (sr_uid,) = [d.SOPInstanceUID for d in result["notice_sr.dcm"]]
        now = time.time()
        store.create("wf-retract", "k-retract", "glioma", "h-retract")
        store.enqueue_delivery("wf-retract", PACS_MODALITY, study_key="k-retract", pipeline="glioma",
                               stage="results", sop_instance_uids=result_uids, now=now,
                               give_up_at=now + SETTINGS.retry_for_s)
        loop = DeliveryLoop(store, sink, SETTINGS, holder="replica-1", retract=Retractor(sink, OBJECTS))
        assert loop.deliver_due() == 1  # the result reached the PACS

        assert store.request_retractions("wf-retract", now=time.time(), give_up_at=now + 600) == [PACS_MODALITY]
        pair.pacs.stop()  # the PACS away when the retraction is due: it waits, like a delivery
        assert loop.deliver_due() == 0
        (waiting,) = store.retractions(workflow_id="wf-retract")
        assert waiting.status == DeliveryStatus.PENDING and "unavailable" in waiting.last_error.lower()
        restarted = restart_orthanc(pair.pacs.name, pair.pacs.storage_dir, pair.pacs.endpoint)
        try:
            assert loop.deliver_due(time.time() + 60) == 1
            assert loop.deliver_due(time.time() + 3600) == 0  # sent once, never again
            in_pacs = [pydicom.dcmread(io.BytesIO(pair.pacs_client.instance_file(i)))
                       for i in pair.pacs_client.get_json("/instances")]
        finally:
            restarted.stop()

        (retraction,) = store.retractions(workflow_id="wf-retract")
        assert (retraction.status, retraction.attempts) == (DeliveryStatus.DELIVERED, 2)
        assert len(in_pacs) == 4  # the two result objects, the retraction SR and its page
        retraction_objects = [d for d in in_pacs if d.SeriesDescription in (RETRACTION_SR_DESCRIPTION,
                                                                              RETRACTION_IMAGE_DESCRIPTION)]
        (sr,) = [d for d in retraction_objects if d.SOPClassUID == Comprehensive3DSRStorage]
        (page,) = [d for d in retraction_objects if d.SOPClassUID != Comprehensive3DSRStorage]
        assert str(sr.StudyInstanceUID) == str(image.StudyInstanceUID)
        predecessors = [r.ReferencedSOPInstanceUID for s in sr.PredecessorDocumentsSequence
                        for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence]
        assert predecessors == [sr_uid]
        evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
        assert set(result_uids) <= evidence
        assert any(t.startswith("RETRACTED by radiologist review on ") and "do not use the AI result of" in t
                   for t in sr_texts(sr))
        assert page.BurnedInAnnotation == "YES" and page.ImageComments.startswith("RETRACTED")
    store.close()
