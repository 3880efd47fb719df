"""The console's image viewer (issue 16, item 5): a study's images from the site Orthanc, read by the console
server with its own credentials, converted to NIfTI and drawn in the browser by NiiVue with the SEG on top;
three synchronised panes for a longitudinal pair. The console mounts ``viewer_routes(StudyImages(client))``."""

from neuroflow.console.viewer.bundle import ViewerBundleMissing
from neuroflow.console.viewer.routes import viewer_body, viewer_routes
from neuroflow.console.viewer.study_images import StudyImages

__all__ = ["StudyImages", "ViewerBundleMissing", "viewer_body", "viewer_routes"]
