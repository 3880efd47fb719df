"""Whether a study is post-operative: the evidence routing sends a glioma study to ``glioma_postop`` on.

Two kinds of evidence, either enough: the study's or a series' description says so ("post op", "postop",
"post-resection", "s/p resection", and the German, French, Dutch, Spanish and Italian words), or a prior
study of the same patient had tumour (a prior the caller found, e.g. neuroflow's own earlier glioma result).
Descriptions are normalised as the series classifier does (ingest.text_patterns.normalise: case, accents,
separators), so "Post-OP", "postopératoire" and "POSTOPERATIV" read alike. A site adds its own phrases in its
site rules (``postoperative_patterns``)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pydicom

from neuroflow.core.glioma_findings import reported_tumour_ml
from neuroflow.core.orthanc import OrthancClient
from neuroflow.core.patient_id import PatientIdentity
from neuroflow.ingest.text_patterns import normalise

# Matched on normalised text (lower case, no accents, separators as single spaces). "op" alone is not enough
# ("op" is also an operator's initials, "OPT" an option): it must follow "post"/"s p"/"nach".
POSTOPERATIVE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("post-operative", re.compile(r"\bpost ?op(erative?|eratoire|eratief|eratorio|eratoria|eratorio)?\b")),
    ("post-resection", re.compile(r"\bpost ?(resection|resektion|exeresis|surgery|surgical|surg)\b")),
    ("status post resection", re.compile(r"\bs ?p (resection|surgery|craniotomy|gtr|str|op)\b|\bstatus post\b")),
    ("after resection", re.compile(r"\b(after|following) (resection|surgery|craniotomy)\b")),
    ("postoperativ (de)", re.compile(r"\bpostoperativ\b|\bnach (op|operation|resektion)\b|\bz n (op|resektion)\b")),
    ("resection cavity", re.compile(r"\b(resection|surgical) cavity\b|\bresektionshohle\b|\bcavite operatoire\b")),
)
# Said of a study before surgery: cancels the description evidence ("pre-op", "praeoperativ", "preop planning").
_PREOPERATIVE = re.compile(r"\bpr(a|ae|e) ?op(erative?|eratoire|eratief|erativ)?\b")


@dataclass(frozen=True)
class PriorTumour:
    """A prior study of the same patient and the tumour volume found there (mL)."""

    study_date: str
    tumour_ml: float
    study_instance_uid: str = ""  # the prior's: where its tumour is read back from (preprocess/prior_bed.py)


def description_evidence(descriptions: Iterable[str], extra_patterns: Sequence[str] = ()) -> list[str]:
    """One line per description that says the study is post-operative (naming the phrase), none when no
    description does or one says pre-operative. ``extra_patterns``: the site's own regular expressions, searched
    case-insensitively in the description as written."""
    found: list[str] = []
    for description in dict.fromkeys(d for d in descriptions if d):
        text = normalise(description)
        if _PREOPERATIVE.search(text):
            return []
        for name, pattern in POSTOPERATIVE_PATTERNS:
            if pattern.search(text):
                found.append(f"description {description!r} says {name}")
                break
        else:
            site = next((p for p in extra_patterns if re.search(p, description, re.IGNORECASE)), None)
            if site is not None:
                found.append(f"description {description!r} matches the site's post-operative pattern {site!r}")
    return found


def prior_evidence(prior: PriorTumour | None, *, min_tumour_ml: float = 0.1) -> list[str]:
    """The line saying a prior study had tumour (at least ``min_tumour_ml``), none otherwise."""
    if prior is None or prior.tumour_ml < min_tumour_ml:
        return []
    return [f"prior study of {prior.study_date or 'unknown date'} had tumour ({prior.tumour_ml:.1f} mL): the tumour "
            "bed is followed up as post-operative"]


def postoperative_evidence(descriptions: Iterable[str], *, prior: PriorTumour | None = None,
                           extra_patterns: Sequence[str] = ()) -> list[str]:
    """Every reason the study is post-operative (empty: it is not taken as post-operative)."""
    return [*description_evidence(descriptions, extra_patterns), *prior_evidence(prior)]


# At most this many of the patient's earlier neuroflow SRs are read (the newest study's decides).
_MAX_PRIOR_SRS = 20


def study_moment(study_date: object, study_time: object) -> str:
    """``YYYYMMDDHHMMSS`` of a StudyDate and StudyTime, sortable (the order longitudinal.priors.acquired_at
    gives timepoints; ingest cannot import that service)."""
    date = str(study_date or "").strip()[:8].ljust(8, "0")
    clock = str(study_time or "").strip().split(".")[0][:6].ljust(6, "0")
    return date + clock


def prior_tumour_in_orthanc(client: OrthancClient, patient: PatientIdentity, study_instance_uid: str,
                            before: str) -> PriorTumour | None:
    """The distributed runtime's prior with tumour: of the neuroflow SRs the site's Orthanc holds for
    ``patient`` in studies acquired before ``before`` (:func:`study_moment`), the newest study's reported whole
    tumour (core.glioma_findings). None when the PatientID cannot find one patient,
    or there is none. Only SR objects are read (a /tools/find on the instances, then their files), never a
    prior's images: ingest looks this up for every glioma study."""
    if patient.problem is not None:
        return None
    answer = client.post_json("/tools/find", {
        "Level": "Instance", "Limit": _MAX_PRIOR_SRS,
        "Query": {"PatientID": patient.patient_id, "Modality": "SR", "StudyDate": f"-{before[:8]}"},
    }, what="find the patient's earlier results")
    found: list[tuple[str, PriorTumour]] = []
    for instance_id in answer or []:
        sr = pydicom.dcmread(io.BytesIO(client.instance_file(str(instance_id))), force=True)
        when = study_moment(sr.get("StudyDate", ""), sr.get("StudyTime", ""))
        if (str(sr.get("StudyInstanceUID", "")) == study_instance_uid or when >= before
                or PatientIdentity.of_tags({"PatientID": sr.get("PatientID", ""),
                                            "IssuerOfPatientID": sr.get("IssuerOfPatientID", "")}) != patient):
            continue
        tumour_ml = reported_tumour_ml(sr)
        if tumour_ml is not None:
            found.append((when, PriorTumour(study_date=when[:8], tumour_ml=tumour_ml,
                                            study_instance_uid=str(sr.get("StudyInstanceUID", "")))))
    return max(found, key=lambda item: item[0])[1] if found else None
