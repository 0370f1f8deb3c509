// Vigil console: live updates and bulk actions, on top of pages that work without it.
// Live updates poll the page's own URL every 10 s for its rows (see docs: polling, not SSE,
// so that no connection is held open against the listener's idle timeout and caps).
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var bulk = document.getElementById("bulk");
  var rows = document.getElementById("rows");
  if (!bulk || !rows) return;
  var status = document.getElementById("bulk-status");
  var say = function (text) { if (status) status.textContent = text; };

  function refresh() {
    var checked = {};
    rows.querySelectorAll('input[name="id"]:checked').forEach(function (b) { checked[b.value] = true; });
    return fetch(bulk.dataset.live, { headers: { "X-Vigil-Fragment": "rows" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { location.href = "/login"; return null; }
        if (!r.ok) return null;
        var hot = parseInt(r.headers.get("X-Vigil-Hot") || "0", 10);
        var total = r.headers.get("X-Vigil-Total");
        return r.text().then(function (html) {
          rows.innerHTML = html;
          rows.querySelectorAll('input[name="id"]').forEach(function (b) { if (checked[b.value]) b.checked = true; });
          document.title = (hot > 0 ? "(" + hot + ") " : "") + "Incidents · Vigil";
          var summary = document.getElementById("summary");
          if (summary && total !== null) {
            summary.textContent = total + (total === "1" ? " incident" : " incidents") +
              (hot > 0 ? "; " + hot + " open P1/P2" : "") + ". Updated live.";
          }
        });
      })
      .catch(function () { /* the next poll tries again */ });
  }
  setInterval(refresh, 10000);

  bulk.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var action = ev.submitter ? ev.submitter.value : "acknowledge";
    var ids = Array.prototype.map.call(rows.querySelectorAll('input[name="id"]:checked'), function (b) { return b.value; });
    if (ids.length === 0) { say("Select incidents first."); return; }
    var body = {};
    if (action === "assign") {
      body.assignee = (bulk.elements.assignee.value || "").trim();
      if (!body.assignee) { say("Give an assignee."); return; }
    }
    say("Working on " + ids.length + "...");
    Promise.all(ids.map(function (id) {
      return fetch("/api/v1/incidents/" + encodeURIComponent(id) + "/" + action, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body)
      }).then(function (r) { return r.ok; }, function () { return false; });
    })).then(function (oks) {
      var done = oks.filter(Boolean).length;
      say(done + " of " + ids.length + " done" + (done < ids.length ? " (the others could not be; see each incident)" : "") + ".");
      return refresh();
    });
  });
})();
