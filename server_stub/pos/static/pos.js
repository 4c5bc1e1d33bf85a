// Progressive help for the till's page; everything works without it.
// 1. While a form waits for the shop's server, say so (after a short moment, so a fast answer
//    shows nothing), and do not send the same form twice.
// 2. The receipt's Print button.
(function () {
  "use strict";
  var progress = document.getElementById("progress");
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.sent === "yes") { event.preventDefault(); return; }
    form.dataset.sent = "yes";
    if (progress) { window.setTimeout(function () { progress.hidden = false; }, 300); }
  });
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form").forEach(function (form) { delete form.dataset.sent; });
    if (progress) { progress.hidden = true; }
  });
  document.querySelectorAll("[data-print]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () { window.print(); });
  });
})();
