// Draws every [data-echarts] container from the JSON option next to it (<script id="<id>-option">),
// on load and after HTMX swaps; keeps the chart instance on the element so live pages can update it.
(function () {
  function draw(root) {
    if (typeof echarts === "undefined") return;
    (root || document).querySelectorAll("[data-echarts]").forEach(function (el) {
      var src = document.getElementById(el.id + "-option");
      if (!src) return;
      var option = JSON.parse(src.textContent);
      var chart = echarts.getInstanceByDom(el) || echarts.init(el, null, { renderer: "canvas" });
      chart.setOption(option, true);
      el.dataset.rendered = "true";
    });
  }
  window.ecoplatCharts = { draw: draw };
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSwap", function (e) { draw(e.target); });
  window.addEventListener("resize", function () {
    document.querySelectorAll("[data-echarts]").forEach(function (el) {
      var chart = echarts.getInstanceByDom(el);
      if (chart) chart.resize();
    });
  });
})();
