"""The console's image viewer against a real site Orthanc and, for what the browser draws, headless Chromium
(Debian's chromium and chromium-driver): the server reads the study with the console's own read-only Orthanc
user, the browser's URLs carry pseudonymous keys only, the SEG is drawn over the image on the patient's left
(radiological display: the screen's right), scrolling moves the slice, and the three panes of a longitudinal
pair scroll together."""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from neuroflow.console.viewer import StudyImages, viewer_routes
from neuroflow.core.errors import OrthancRequestFailed
from neuroflow.core.identity import study_key
from neuroflow.core.orthanc import OrthancClient
from neuroflow.devtools.ports import free_loopback_port
from tests.servers.browser import MISSING, chromium_installed, headless_chromium
from tests.servers.orthanc import OrthancPair
from tests.viewer_study import ViewerStudy, write_viewer_study


@dataclass(frozen=True)
class Served:
    url: str
    study: ViewerStudy
    followup_key: str
    baseline_key: str
    console_client: OrthancClient


async def _anyone(request: Request, study_key: str) -> Response | None:
    return None


@pytest.fixture(scope="module")
def served(orthanc_servers: OrthancPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The synthetic pair in the site Orthanc, and the viewer's routes served by uvicorn on a free port."""
    study = write_viewer_study(tmp_path_factory.mktemp("viewer-study"))
    orthanc_servers.site_client.delete_everything()
    for path in study.files:
        orthanc_servers.site_client.upload(path.read_bytes())
    console_client = OrthancClient(orthanc_servers.site.service_endpoint("console"))
    # The console's log-in is tested with the console (test_console_browser); here the viewer alone.
    app = Starlette(routes=viewer_routes(StudyImages(console_client), authorize=_anyone))
    port = free_loopback_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the viewer's server did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", study, study_key(study.followup_uid), study_key(study.baseline_uid),
                     console_client)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _uids(study: ViewerStudy) -> set[str]:
    import pydicom

    found = {study.followup_uid, study.baseline_uid}
    for path in study.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return found


def test_the_viewer_reads_the_study_as_the_read_only_console_user_and_its_urls_carry_no_uid(served: Served) -> None:
    status, page = _get(f"{served.url}/studies/{served.followup_key}/viewer?baseline={served.baseline_key}")
    assert status == 200
    status, body = _get(f"{served.url}/viewer/studies/{served.followup_key}/manifest.json"
                        f"?baseline={served.baseline_key}")
    assert status == 200, body
    manifest = json.loads(body)
    assert [p["id"] for p in manifest["panes"]] == ["baseline", "followup", "change"]
    for text in (page.decode(), body.decode()):
        assert not [uid for uid in _uids(served.study) if uid in text]
        assert served.console_client.endpoint.url not in text  # the browser is never sent to Orthanc
    change = manifest["panes"][2]
    status, image = _get(served.url + change["image"]["url"])
    assert status == 200
    status, labels = _get(served.url + change["overlay"]["url"])
    assert status == 200
    image_nii = nib.Nifti1Image.from_bytes(gzip.decompress(image))
    labels_nii = nib.Nifti1Image.from_bytes(gzip.decompress(labels))
    labelled = np.argwhere(np.asarray(labels_nii.dataobj) > 0)
    assert len(labelled) == 3 * 8 * 8
    assert (nib.affines.apply_affine(labels_nii.affine, labelled)[:, 0] < 0).all()  # RAS: the patient's left
    assert (np.asarray(image_nii.dataobj)[tuple(labelled.T)] > 600).all()  # on the marker
    # The console's Orthanc user reads, and cannot change anything.
    with pytest.raises(OrthancRequestFailed) as refused:
        served.console_client.request("POST", "/instances", body=b"not dicom", content_type="application/dicom")
    assert refused.value.status == 403


def test_a_uid_or_an_unknown_study_in_the_url_is_refused_naming_what_is_wrong(served: Served) -> None:
    status, body = _get(f"{served.url}/studies/{served.study.followup_uid}/viewer")
    assert status == 400 and b"takes no UIDs" in body
    status, body = _get(f"{served.url}/viewer/studies/{'0' * 12}/manifest.json")
    assert status == 404 and b"study 000000000000" in body
    status, body = _get(f"{served.url}/viewer/studies/{served.baseline_key}/manifest.json?baseline=prior")
    assert status == 404 and b"no earlier study of the patient" in body


# -- in the browser ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not chromium_installed():
        pytest.skip(MISSING)
    # WebGL in software: NiiVue draws with it, and a headless container has no GPU.
    with headless_chromium(window="1500,900", browser_log=True,
                           flags=("--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                                  "--disable-gpu-sandbox")) as driver:
        yield driver


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    deadline = time.monotonic() + 45
    while True:
        state = driver.execute_script("const v = window.neuroflowViewer; return v ? [v.ready, v.error] : [false, ''];")
        if state[0]:
            break
        assert not state[1], f"the viewer failed: {state[1]}"
        assert time.monotonic() < deadline, f"the viewer did not draw in 45 s; browser log: {driver.get_log('browser')}"
        time.sleep(0.2)
    time.sleep(0.5)  # the last frame drawn


def _overlay_pixels(driver: Any, pane: str) -> tuple[np.ndarray, int]:
    """(x, y) of the pane's pixels in the overlay's colour (vermillion over grey: red well above green and
    blue; grey has R = G = B), and the canvas width."""
    from PIL import Image

    canvas = driver.find_element("css selector", f'section[data-pane="{pane}"] canvas')
    rgb = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(int)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mask = (red - blue > 80) & (red - green > 40)
    ys, xs = np.nonzero(mask)
    return np.column_stack([xs, ys]), rgb.shape[1]


def _wheel(driver: Any, pane: str, notches: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    canvas = driver.find_element("css selector", f'section[data-pane="{pane}"] canvas')
    ActionChains(driver).move_to_element(canvas).click().perform()  # focus: NiiVue broadcasts from the focused pane
    for _ in range(abs(notches)):
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 100 if notches > 0 else -100
                                                ).perform()
        time.sleep(0.05)
    time.sleep(0.3)


def _page_errors(driver: Any) -> list[str]:
    """Errors the page logged (a refused script, a failed request), but the favicon the console serves, not us."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]]


def test_the_browser_draws_the_seg_on_the_patients_left_and_scrolls_it_away(served: Served, browser: Any,
                                                                             tmp_path: Path) -> None:
    _open(browser, f"{served.url}/studies/{served.followup_key}/viewer")
    assert browser.execute_script("return window.neuroflowViewer.slices()")[0] in (5, 6, 7)  # the marker's slices
    drawn, width = _overlay_pixels(browser, "study")
    browser.save_screenshot(str(tmp_path / "viewer.png"))
    assert len(drawn) > 100, f"no overlay drawn (screenshot {tmp_path / 'viewer.png'})"
    # Radiological display: the patient's left on the screen's right.
    assert drawn[:, 0].min() > width / 2, f"overlay x from {drawn[:, 0].min()} of width {width}"
    # Zoom and window/level through the controls.
    browser.find_element("css selector", 'button[data-action="zoom-in"]').click()
    assert browser.execute_script("return window.neuroflowViewer.panes[0].scene.pan2Dxyzmm[3]") == pytest.approx(1.25)
    width = browser.find_element("css selector", 'input[aria-label="window width"]')
    level = browser.find_element("css selector", 'input[aria-label="window level"]')
    for field, value in ((width, "200"), (level, "500")):
        field.clear()
        field.send_keys(value + "\n")
    shown = browser.execute_script("const v = window.neuroflowViewer.panes[0].volumes[0]; return [v.cal_min,v.cal_max]")
    assert shown == [400, 600]
    _wheel(browser, "study", 8)
    slice_after = browser.execute_script("return window.neuroflowViewer.slices()")[0]
    assert slice_after not in (5, 6, 7)
    assert len(_overlay_pixels(browser, "study")[0]) == 0, "the overlay is still drawn off the marker's slices"
    assert not _page_errors(browser)


def test_the_three_panes_of_a_pair_scroll_together_and_only_the_change_pane_has_the_overlay(
        served: Served, browser: Any) -> None:
    # ?baseline=prior: the patient's study before this one, found in the site Orthanc.
    _open(browser, f"{served.url}/studies/{served.followup_key}/viewer?baseline=prior")
    baseline_url = browser.execute_script("return window.neuroflowViewer.panes[0].volumes[0].url")
    assert f"/studies/{served.baseline_key}/" in baseline_url
    assert [len(_overlay_pixels(browser, pane)[0]) > 100 for pane in ("baseline", "followup", "change")] == [
        False, False, True]
    before = browser.execute_script("return window.neuroflowViewer.slices()")
    assert len(set(before)) == 1
    _wheel(browser, "baseline", 3)
    after = browser.execute_script("return window.neuroflowViewer.slices()")
    assert after[0] != before[0] and len(set(after)) == 1, f"slices {before} -> {after}"
    assert not _page_errors(browser)
