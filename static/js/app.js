/* MergeHub page glue: CSRF for htmx requests and Plotly charts from embedded figure JSON.
 * All page code lives here (or in static/vendor): the Content-Security-Policy allows scripts
 * from this site only, so templates carry no inline code or on* attributes.
 *
 * A chart is a <div class="chart" data-figure="ID"> next to <script type="application/json" id="ID">
 * holding the figure ({data, layout}) that mergehub/ui/charts.py (and the apps' chart builders) wrote. Charts are drawn on page
 * load and whenever htmx swaps new content in, so partials may carry charts too.
 */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRFToken"] = csrfToken();
  });

  var plotConfig = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function drawCharts(root) {
    if (typeof Plotly === "undefined") { return; }
    var nodes = root.querySelectorAll ? root.querySelectorAll("[data-figure]") : [];
    nodes.forEach(function (node) {
      if (node.dataset.drawn === "1") { return; }
      var source = document.getElementById(node.dataset.figure);
      if (!source) { return; }
      var figure = JSON.parse(source.textContent);
      node.dataset.drawn = "1";
      Plotly.newPlot(node, figure.data || [], figure.layout || {}, plotConfig);
    });
  }

  /* <div data-show-when="source=local"> is shown only while the radio/select "source" is "local". */
  function applyShowWhen(root) {
    var scope = root.closest ? (root.closest("form") || document) : document;
    scope.querySelectorAll("[data-show-when]").forEach(function (node) {
      var rule = node.dataset.showWhen.split("="), form = node.closest("form");
      if (!form) { return; }
      var chosen = form.querySelector('[name="' + rule[0] + '"]:checked') ||
                   form.querySelector('select[name="' + rule[0] + '"]');
      node.hidden = !!chosen && chosen.value !== rule[1];
    });
  }
  document.addEventListener("change", function (event) { applyShowWhen(event.target); });

  /* <select data-autosubmit> submits its form when changed (the team switcher). */
  document.addEventListener("change", function (event) {
    var node = event.target;
    if (node.matches && node.matches("[data-autosubmit]") && node.form) { node.form.submit(); }
  });

  /* <button data-copy="ID"> copies the text of the element with that id to the clipboard (a run's
   * YAML); its label says "Copied" (data-copied-label) for a moment. */
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) { return navigator.clipboard.writeText(text); }
    var area = document.createElement("textarea");  // plain-http fallback
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = document.execCommand("copy");
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) { return; }
    var source = document.getElementById(button.dataset.copy);
    if (!source) { return; }
    var label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    copyText(source.textContent).then(function () {
      button.textContent = button.dataset.copiedLabel || "Copied";
    }, function () {
      button.textContent = "Select the text to copy";
    }).then(function () {
      window.setTimeout(function () { button.textContent = label; }, 1500);
    });
  });

  /* Keep live logs scrolled to their newest line. */
  function scrollLogs(root) {
    var nodes = root.querySelectorAll ? root.querySelectorAll("[data-autoscroll]") : [];
    nodes.forEach(function (node) { node.scrollTop = node.scrollHeight; });
  }

  function onLoad(root) {
    drawCharts(root);
    applyShowWhen(root);
    scrollLogs(root);
  }

  if (typeof htmx !== "undefined") {
    htmx.onLoad(onLoad);  // runs for the initial document and for every swapped-in fragment
  } else {
    document.addEventListener("DOMContentLoaded", function () { onLoad(document.body); });
  }
})();
