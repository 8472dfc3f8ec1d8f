// The status page's refresh, without reloading the page: every element with data-refresh is replaced by the
// fragment the server renders at that URL (autoescaped there, exactly as on the first load); a build's log is
// followed through /api/builds/<id>/log?offset=N and appended as text, never as HTML. Relative times are kept
// current from each <time datetime>. No framework, no build step, nothing from another origin.
(function () {
  "use strict";

  var seconds = Number(document.body.getAttribute("data-refresh-seconds")) || 3;
  var live = document.getElementById("live");

  function ago(iso) {
    var delta = (Date.now() - Date.parse(iso)) / 1000;
    var future = delta < 0;
    var s = Math.abs(delta);
    var text;
    if (s < 5) return "just now";
    if (s < 60) text = Math.floor(s) + " s";
    else if (s < 3600) text = Math.floor(s / 60) + " min";
    else if (s < 86400) text = Math.floor(s / 3600) + " h";
    else text = Math.floor(s / 86400) + " d";
    return future ? "in " + text : text + " ago";
  }

  function updateTimes(scope) {
    var times = scope.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var rel = times[i].querySelector(".rel");
      if (rel) rel.textContent = ago(times[i].getAttribute("datetime"));
    }
  }

  function setLive(ok, text) {
    if (!live) return;
    live.textContent = text || (ok ? "live" : "offline, retrying");
    live.classList.toggle("stale", !ok);
  }

  function authLost(response) {
    if (response.status === 401) {
      window.location.reload(); // the session ended: the server answers with the sign-in form
      return true;
    }
    return false;
  }

  function refresh(element) {
    var url = element.getAttribute("data-refresh");
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (authLost(response)) return;
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text().then(function (html) {
          // The fragment is the server's own autoescaped rendering; the CSP forbids any inline script in it.
          var doc = new DOMParser().parseFromString(html, "text/html");
          element.replaceChildren.apply(element, Array.prototype.slice.call(doc.body.childNodes));
          updateTimes(element);
          setLive(true);
        });
      })
      .catch(function () { setLive(false); });
  }

  function refreshAll() {
    if (document.hidden) return;
    var targets = document.querySelectorAll("[data-refresh]");
    for (var i = 0; i < targets.length; i++) refresh(targets[i]);
  }

  function followLog(pre) {
    var api = pre.getAttribute("data-api");
    var offset = Number(pre.getAttribute("data-next-offset")) || 0;
    var state = document.getElementById("log-state");
    if (pre.getAttribute("data-complete") === "true") return;

    function atBottom() {
      return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    }

    function step() {
      fetch(api + "?offset=" + offset, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (authLost(response)) return null;
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (chunk) {
          if (!chunk) return;
          var stick = atBottom();
          if (chunk.cut) pre.appendChild(document.createTextNode(pre.getAttribute("data-cut-marker")));
          if (chunk.text) pre.appendChild(document.createTextNode(chunk.text));
          offset = chunk.next_offset;
          if (stick && chunk.text) window.scrollTo(0, document.body.scrollHeight);
          setLive(true);
          if (chunk.complete) {
            pre.setAttribute("data-complete", "true");
            if (state) state.textContent = "complete";
            var build = document.getElementById("build");
            if (build) refresh(build); // show the final state at once
            return;
          }
          setTimeout(step, 1000);
        })
        .catch(function () {
          setLive(false);
          setTimeout(step, 3000);
        });
    }
    step();
  }

  document.addEventListener("DOMContentLoaded", function () {
    updateTimes(document);
    setInterval(refreshAll, seconds * 1000);
    setInterval(function () { updateTimes(document); }, 5000);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refreshAll(); });
    var pre = document.getElementById("log");
    if (pre) followLog(pre);
  });
})();
