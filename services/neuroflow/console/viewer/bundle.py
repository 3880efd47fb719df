"""Where the viewer's front end is: the JavaScript bundle esbuild builds from ``frontend/`` (NiiVue and our
``src/viewer.js``, from npm at build time, never from a CDN at run time) and the few files kept as written
(``assets/``). The bundle is a build output, not in git: ``make viewer-bundle`` runs ``npm ci`` from the
lockfile and esbuild; ``make test`` and ``make demo`` build it first."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
FRONTEND_DIR = HERE / "frontend"
BUNDLE_DIR = HERE / "static"  # esbuild's output (frontend/package.json, "build")
ASSETS_DIR = HERE / "assets"  # written by hand: the page's style sheet
BUNDLE_FILE = "viewer.js"
BUILD_COMMAND = "make viewer-bundle"


class ViewerBundleMissing(RuntimeError):
    """The viewer's JavaScript was never built on this machine: the console cannot show images."""


def bundle_dir(directory: Path = BUNDLE_DIR) -> Path:
    """The folder the built bundle is in; raises ViewerBundleMissing, saying how to build it, without one."""
    if not (directory / BUNDLE_FILE).is_file():
        raise ViewerBundleMissing(
            f"the viewer's front end is not built ({directory / BUNDLE_FILE} is missing): run `{BUILD_COMMAND}` "
            f"(npm ci and esbuild in {FRONTEND_DIR})")
    return directory
