// Progressive help for the till's page; everything works without it.
// 1. While a form waits for the shop's server, say so (after a short moment, so a fast answer
//    shows nothing), and do not send the same form twice.
// 2. The receipt's Print button.
// 3. A scan while a button or a choice has the focus goes to the scan field: a wedge scanner
//    types the code and then Enter, which would otherwise press the focused button (Confirm,
//    Print) and lose the scan.
(function () {
  "use strict";
  var scanField = document.getElementById("code");
  var typedInto = ["text", "search", "number", "password", "email", "tel", "url"];
  function takesText(element) {
    if (!element) { return false; }
    if (element.tagName === "TEXTAREA" || element.isContentEditable) { return true; }
    return element.tagName === "INPUT" && typedInto.indexOf(element.type) >= 0;
  }
  document.addEventListener("keydown", function (event) {
    // One printable character (not Space, which presses a button) outside any text field.
    if (!scanField || event.key.length !== 1 || event.key === " ") { return; }
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (takesText(document.activeElement)) { return; }
    scanField.focus();  // this key, and the rest of the scan, land in the scan field
  }, true);
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
