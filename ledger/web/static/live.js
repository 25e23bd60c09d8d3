// Live pages without a reload: the server sends an event when the ledger changed (woken by the
// database, debounced); the page fetches itself and swaps in the fresh <main id="live">. Forms
// live outside <main>, so what someone is typing is never replaced.
(function () {
  "use strict";
  if (!window.EventSource || !window.fetch) return;
  var status = document.getElementById("live-status");
  var busy = false, again = false, updates = 0;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { headers: { "X-Live-Update": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var old = document.getElementById("live");
        if (fresh && old) {
          old.replaceWith(fresh);
          updates += 1;
          document.body.setAttribute("data-live-updates", String(updates));
        }
      })
      .catch(function () {})
      .finally(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var source = new EventSource("/events");
  source.addEventListener("hello", function () {
    if (status) status.className = "live on";
    document.body.setAttribute("data-live", "connected");
  });
  source.addEventListener("change", refresh);
  source.onerror = function () { if (status) status.className = "live off"; };
})();
