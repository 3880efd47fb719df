// Live worklist: every data-refresh-s seconds, the rows again (same filters), swapped in place.
(function () {
  "use strict";
  const rows = document.getElementById("worklist-rows");
  if (!rows) { return; }
  const period = 1000 * Math.max(1, parseFloat(rows.dataset.refreshS || "5"));
  async function refresh() {
    try {
      const response = await fetch("/worklist/rows" + window.location.search,
                                   { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        rows.innerHTML = await response.text();
        const updated = document.getElementById("updated");
        if (updated) { updated.textContent = new Date().toISOString().slice(0, 19) + "Z"; }
      } else if (response.status === 401 || response.redirected) {
        window.location.assign("/login");
        return;
      }
    } catch (e) { /* the next round tries again */ }
    window.setTimeout(refresh, period);
  }
  window.setTimeout(refresh, period);
})();
