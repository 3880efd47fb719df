"""The viewer's web routes, for the console's Starlette application to mount at its root:

    GET /studies/{study_key}/viewer                      the page (?baseline=<study key> or ?baseline=prior,
                                                         the patient's study before, for the three panes of a
                                                         longitudinal pair; ?series= / ?seg= pick one)
    GET /viewer/studies/{study_key}/manifest.json        the panes and the URLs of their volumes
    GET /viewer/studies/{study_key}/series/{key}.nii.gz  one image series as NIfTI
    GET /viewer/studies/{study_key}/labels/{key}.nii.gz  one SEG as a label volume on its series' grid
    GET /viewer/static/{viewer.js | viewer.css}          the front end (NiiVue, bundled at build time)

Every key is a pseudonymous key (12 hex digits): a URL never holds a UID or a patient's identifier. The
console's ``authorize(request, study_key)`` runs before anything of a study is read (log-in, role, audit): a
response it returns (the log-in page, 403) is the answer instead."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from neuroflow.console.viewer.bundle import ASSETS_DIR, BUNDLE_DIR, BUNDLE_FILE, bundle_dir
from neuroflow.console.viewer.layout import OVERLAY_OPACITY, NothingToShow, Pane, change_panes, study_panes
from neuroflow.console.viewer.study_images import NotInOrthanc, StudyImages
from neuroflow.core.errors import OrthancRequestFailed, OrthancUnavailable, StudyError

log = logging.getLogger(__name__)

Authorize = Callable[[Request, str], Awaitable[Response | None]]
_T = TypeVar("_T")

_KEY = re.compile(r"[0-9a-f]{12}")
PRIOR = "prior"  # ?baseline=prior: the patient's latest earlier study in the site Orthanc
_NIFTI = "application/octet-stream"  # gzipped bytes NiiVue reads itself: no Content-Encoding, no decompression
_PRIVATE = {"Cache-Control": "private, no-store"}  # images of a patient: never kept by a shared cache
# The page's own policy: scripts and data from the console only; NiiVue draws its font atlas and colour bars
# from data: and blob: images it makes itself.
_PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; "
                "base-uri 'none'; frame-ancestors 'none'")


def viewer_routes(images: StudyImages, *, authorize: Authorize,
                  static_dir: Path = BUNDLE_DIR) -> list[BaseRoute]:
    """The viewer's routes over ``images`` (the site Orthanc, read with the console's own credentials).
    Raises ViewerBundleMissing, naming the make target, when the front end was never built."""
    static_files = {BUNDLE_FILE: bundle_dir(static_dir) / BUNDLE_FILE, "viewer.css": ASSETS_DIR / "viewer.css"}

    async def page(request: Request) -> Response:
        key = _key(request.path_params["study_key"], "study")
        if (refused := await authorize(request, key)) is not None:
            return refused
        manifest = request.url_for("viewer_manifest", study_key=key).path
        query = _picked(request)
        if query:
            manifest += "?" + "&".join(f"{name}={value}" for name, value in query.items())
        return HTMLResponse(viewer_page(key, manifest_url=manifest,
                                        script_url=request.url_for("viewer_static", name=BUNDLE_FILE).path,
                                        style_url=request.url_for("viewer_static", name="viewer.css").path),
                            headers={**_PRIVATE, "Content-Security-Policy": _PAGE_POLICY})

    async def manifest(request: Request) -> Response:
        key = _key(request.path_params["study_key"], "study")
        if (refused := await authorize(request, key)) is not None:
            return refused
        picked = _picked(request)
        if picked.get("baseline") == PRIOR:
            prior = await _answer(run_in_threadpool(images.prior_key, key))
            if prior is None:
                raise HTTPException(404, f"study {key}: the site Orthanc holds no earlier study of the patient")
            picked["baseline"] = prior
        if "baseline" in picked and (refused := await authorize(request, picked["baseline"])) is not None:
            return refused
        panes = await _answer(run_in_threadpool(_panes, images, key, picked))
        return JSONResponse(_manifest(request, key, panes), headers=_PRIVATE)

    async def volume(request: Request, parameter: str, what: str, read: Callable[[str, str], bytes]) -> Response:
        """One NIfTI volume of the study: ``read(study key, the ``parameter`` key naming a ``what``)``."""
        key = _key(request.path_params["study_key"], "study")
        if (refused := await authorize(request, key)) is not None:
            return refused
        data = await _answer(run_in_threadpool(read, key, _key(request.path_params[parameter], what)))
        return Response(data, media_type=_NIFTI, headers=_PRIVATE)

    async def series_image(request: Request) -> Response:
        # Looked up only once authorised: nothing of the study is touched before.
        return await volume(request, "series_key", "series", lambda key, series: images.image_nifti(key, series))

    async def seg_labels(request: Request) -> Response:
        return await volume(request, "seg_key", "segmentation", lambda key, seg: images.labels_nifti(key, seg))

    async def static(request: Request) -> Response:
        path = static_files.get(request.path_params["name"])
        if path is None:
            raise HTTPException(404, "no such file of the viewer")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return [
        Route("/studies/{study_key}/viewer", page, name="viewer_page"),
        Route("/viewer/studies/{study_key}/manifest.json", manifest, name="viewer_manifest"),
        Route("/viewer/studies/{study_key}/series/{series_key}.nii.gz", series_image, name="viewer_series"),
        Route("/viewer/studies/{study_key}/labels/{seg_key}.nii.gz", seg_labels, name="viewer_labels"),
        Route("/viewer/static/{name}", static, name="viewer_static"),
    ]


def viewer_page(study_key: str, *, manifest_url: str, script_url: str, style_url: str) -> str:
    """The page: a root element the bundle fills from the manifest (the console may embed ``viewer_body``
    in its own layout instead)."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Viewer: study {html.escape(study_key)}</title>"
            f'<link rel="stylesheet" href="{html.escape(style_url)}"></head>\n<body>\n'
            f"{viewer_body(study_key, manifest_url=manifest_url, script_url=script_url)}\n</body></html>\n")


def viewer_body(study_key: str, *, manifest_url: str, script_url: str) -> str:
    """The viewer's markup and script, for a page of the console's own (its style sheet is ``viewer.css``)."""
    return (f'<main id="nf-viewer" data-manifest="{html.escape(manifest_url)}">'
            f"<h1>Study {html.escape(study_key)}</h1>"
            '<div class="nf-controls"></div><p class="nf-status" role="status">loading…</p>'
            '<div class="nf-panes"></div></main>'
            f'<script src="{html.escape(script_url)}"></script>')


def _panes(images: StudyImages, key: str, picked: dict[str, str]) -> list[Pane]:
    series, segs = images.series(key), images.segs(key)
    baseline = picked.get("baseline")
    if baseline is None:
        return study_panes(key, series, segs, series_key=picked.get("series"), seg_key=picked.get("seg"))
    return change_panes(key, series, segs, baseline, images.series(baseline), series_key=picked.get("series"),
                        seg_key=picked.get("seg"))


def _manifest(request: Request, key: str, panes: Sequence[Pane]) -> dict[str, Any]:
    def pane(p: Pane) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": p.id, "title": p.title,
            "image": {"url": request.url_for("viewer_series", study_key=p.study_key, series_key=p.series.key).path},
            "overlay": None,
        }
        if p.seg is not None:
            segments = p.seg.segments
            out["overlay"] = {
                "url": request.url_for("viewer_labels", study_key=p.study_key, seg_key=p.seg.key).path,
                "opacity": OVERLAY_OPACITY,
                # NiiVue's label colour map: index 0 (no segment) transparent, each segment its own colour.
                "lut": {"I": [0, *(s.number for s in segments)], "R": [0, *(s.rgb[0] for s in segments)],
                        "G": [0, *(s.rgb[1] for s in segments)], "B": [0, *(s.rgb[2] for s in segments)],
                        "A": [0, *(255 for _ in segments)], "labels": ["", *(s.label for s in segments)]},
            }
        return out

    note = ("Panes are aligned by patient position (scanner coordinates), not by the pipeline's registration."
            if len(panes) > 1 else "")
    return {"study_key": key, "panes": [pane(p) for p in panes], "note": note}


def _picked(request: Request) -> dict[str, str]:
    """The optional choices of the query (baseline study, series, segmentation), each a valid key."""
    picked = {name: request.query_params[name] for name in ("baseline", "series", "seg")
              if name in request.query_params}
    return {name: value if (name, value) == ("baseline", PRIOR) else _key(value, name)
            for name, value in picked.items()}


def _key(value: str, what: str) -> str:
    if not _KEY.fullmatch(value):
        raise HTTPException(400, f"not a {what} key (12 hexadecimal digits): the viewer takes no UIDs")
    return value


async def _answer(work: Awaitable[_T]) -> _T:
    """The result of ``work``, or the HTTP answer its failure deserves, with a text naming the study."""
    try:
        return await work
    except (NotInOrthanc, NothingToShow) as error:
        raise HTTPException(404, str(error)) from error
    except StudyError as error:
        raise HTTPException(422, str(error)) from error
    except (OrthancUnavailable, OrthancRequestFailed) as error:
        log.warning("viewer: the site Orthanc failed: %s", error)
        raise HTTPException(502, "the site Orthanc did not answer the viewer's request") from error
