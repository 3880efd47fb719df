"""The viewer's pages inside the console: the site Orthanc read with the console's own (read-only) Orthanc
user, and every viewer request, the volumes included, behind the console's log-in and VIEW permission."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from neuroflow.console.app import Console, require
from neuroflow.console.auth import Permission
from neuroflow.console.viewer.routes import viewer_routes
from neuroflow.console.viewer.study_images import StudyImages
from neuroflow.core.orthanc import OrthancClient, OrthancEndpoint


def console_viewer_routes(console: Console) -> list[BaseRoute]:
    images = StudyImages(OrthancClient(OrthancEndpoint.from_settings(console.settings.dicom)))

    async def authorize(request: Request, study_key: str) -> Response | None:
        checked = await require(console, request, Permission.VIEW)
        return checked if isinstance(checked, Response) else None

    return viewer_routes(images, authorize=authorize)
