// The console's image viewer: one NiiVue pane per entry of the study's manifest (one for a study, three for a
// longitudinal pair: baseline, follow-up, change), each an image with its label overlay drawn on top.
// The panes are synchronised (slice, crosshair, zoom). Everything comes from the console server, which reads
// the site Orthanc with its own credentials: the browser holds none, and the URLs carry only opaque keys.
//
// Controls: mouse wheel or the slider scrolls slices; right-drag or the window/level fields set the contrast;
// the + / - buttons (or ctrl+wheel) zoom; Reset restores all three.
import { Niivue, SLICE_TYPE } from "@niivue/niivue";

const ZOOM_STEP = 1.25;

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function status(root, message, isError = false) {
  const line = root.querySelector(".nf-status");
  line.textContent = message;
  line.classList.toggle("nf-error", isError);
}

async function fetchManifest(url) {
  // Same-origin request: the console's session cookie goes along, nothing else.
  const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!answer.ok) {
    const text = await answer.text();
    throw new Error(`the viewer could not read the study (${answer.status}): ${text}`);
  }
  return answer.json();
}

function paneView(pane) {
  const box = element("section", { class: "nf-pane", "data-pane": pane.id });
  box.append(element("h2", {}, pane.title));
  const canvas = element("canvas", { id: `nf-canvas-${pane.id}`, width: "512", height: "512" });
  box.append(canvas);
  if (pane.note) box.append(element("p", { class: "nf-note" }, pane.note));
  return { box, canvas };
}

async function openPane(pane, canvas) {
  const nv = new Niivue({
    backColor: [0, 0, 0, 1],
    isRadiologicalConvention: true, // the patient's left on the screen's right, as radiologists read
    dragAndDropEnabled: false,
    isColorbar: false,
    show3Dcrosshair: false,
    crosshairWidth: 0.3, // thin (a percent of the field of view), with a gap that leaves the point itself visible
    crosshairWidthUnit: "percent",
    crosshairGap: 6,
    crosshairColor: [0.3, 0.9, 0.3, 0.8], // green: no segment is drawn in it (core/labels.py's palette)
    loadingText: "loading…",
  });
  await nv.attachToCanvas(canvas);
  nv.setSliceType(SLICE_TYPE.AXIAL);
  const volumes = [{ url: pane.image.url, name: "image.nii.gz", colormap: "gray" }];
  if (pane.overlay) volumes.push({ url: pane.overlay.url, name: "labels.nii.gz", colormap: "gray", opacity: pane.overlay.opacity });
  await nv.loadVolumes(volumes);
  if (pane.overlay) {
    // A label map: one fixed colour per label (the project's own, from the server), 0 transparent.
    nv.volumes[1].setColormapLabel(pane.overlay.lut);
    nv.updateGLVolume();
  }
  return nv;
}

// Slices along the displayed axis (NiiVue reslices every volume to RAS for display, so axial is its third axis).
function sliceCount(nv) {
  return nv.volumes[0].dimsRAS[3];
}

function currentSlice(nv) {
  return Math.round(nv.frac2vox(nv.scene.crosshairPos)[2]);
}

// The pane the slider and the slice number follow: the last (the study's only pane, or the change pane of a
// pair, which is on the follow-up's grid).
function lead(viewer) {
  return viewer.panes[viewer.panes.length - 1];
}

// Moves the lead pane to slice ``index`` and the others to the same place in patient space (mm).
function setSlice(viewer, index) {
  const first = lead(viewer);
  const step = Math.min(sliceCount(first) - 1, Math.max(0, index)) - currentSlice(first);
  if (step !== 0) first.moveCrosshairInVox(0, 0, step);
  const mm = first.frac2mm(first.scene.crosshairPos);
  for (const nv of viewer.panes) if (nv !== first) nv.scene.crosshairPos = nv.mm2frac(mm);
  for (const nv of viewer.panes) nv.drawScene();
  first.createOnLocationChange(0);
}

function setWindow(viewer, width, level) {
  for (const nv of viewer.panes) {
    const image = nv.volumes[0];
    image.cal_min = level - width / 2;
    image.cal_max = level + width / 2;
    nv.updateGLVolume();
  }
}

function zoom(viewer, factor) {
  for (const nv of viewer.panes) {
    const [x, y, z, scale] = nv.scene.pan2Dxyzmm;
    nv.setPan2Dxyzmm([x, y, z, Math.min(16, Math.max(0.25, scale * factor))]);
  }
}

function controls(root, viewer) {
  const bar = root.querySelector(".nf-controls");
  const first = lead(viewer);
  const slices = sliceCount(first);
  const slider = element("input", { type: "range", min: "0", max: String(slices - 1), value: String(currentSlice(first)), "aria-label": "slice" });
  const sliceLabel = element("span", { class: "nf-slice" });
  const image = first.volumes[0];
  const width = element("input", { type: "number", step: "any", value: String(Math.round(image.cal_max - image.cal_min)), "aria-label": "window width" });
  const level = element("input", { type: "number", step: "any", value: String(Math.round((image.cal_max + image.cal_min) / 2)), "aria-label": "window level" });
  const zoomIn = element("button", { type: "button", "data-action": "zoom-in" }, "+");
  const zoomOut = element("button", { type: "button", "data-action": "zoom-out" }, "−");
  const reset = element("button", { type: "button", "data-action": "reset" }, "Reset");
  const initial = { width: Number(width.value), level: Number(level.value) };
  const showSlice = () => {
    const k = currentSlice(first);
    slider.value = String(k);
    sliceLabel.textContent = `slice ${k + 1} / ${slices}`;
  };
  slider.addEventListener("input", () => setSlice(viewer, Number(slider.value)));
  const applyWindow = () => setWindow(viewer, Math.max(1, Number(width.value)), Number(level.value));
  width.addEventListener("change", applyWindow);
  level.addEventListener("change", applyWindow);
  zoomIn.addEventListener("click", () => zoom(viewer, ZOOM_STEP));
  zoomOut.addEventListener("click", () => zoom(viewer, 1 / ZOOM_STEP));
  reset.addEventListener("click", () => {
    width.value = String(initial.width);
    level.value = String(initial.level);
    applyWindow();
    for (const nv of viewer.panes) nv.setPan2Dxyzmm([0, 0, 0, 1]);
    setSlice(viewer, Math.floor(slices / 2));
  });
  for (const nv of viewer.panes) nv.onLocationChange = showSlice;
  bar.append(element("label", {}, "Slice "), slider, sliceLabel, element("label", {}, " Window "), width,
    element("label", {}, " Level "), level, element("span", {}, " Zoom "), zoomIn, zoomOut, reset);
  showSlice();
}

async function start(root) {
  // Read by the browser tests: whether every pane has drawn, and each pane's slice.
  const viewer = { panes: [], ready: false, error: "", slices: () => viewer.panes.map(currentSlice), setSlice: (k) => setSlice(viewer, k) };
  window.neuroflowViewer = viewer;
  try {
    const manifest = await fetchManifest(root.dataset.manifest);
    const grid = root.querySelector(".nf-panes");
    grid.classList.add(`nf-panes-${manifest.panes.length}`);
    const views = manifest.panes.map((pane) => ({ pane, ...paneView(pane) }));
    for (const view of views) grid.append(view.box);
    viewer.panes = await Promise.all(views.map((view) => openPane(view.pane, view.canvas)));
    // Every pane leads: scrolling or zooming any of them moves the others to the same place (mm, not voxel).
    for (const nv of viewer.panes) {
      const others = viewer.panes.filter((other) => other !== nv);
      if (others.length) nv.broadcastTo(others, { "2d": true, "3d": true });
    }
    controls(root, viewer);
    status(root, manifest.note || "");
    viewer.ready = true;
  } catch (error) {
    viewer.error = String(error.message || error);
    status(root, viewer.error, true);
  }
}

const root = document.getElementById("nf-viewer");
if (root) start(root);
