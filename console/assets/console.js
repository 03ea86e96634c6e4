// Outpost console: the little the server cannot do. Served from the
// binary (no inline script: the CSP forbids it), no framework.
//  - times: <time class="rel|abs" datetime> in the viewer's timezone
//  - live: server-sent events patch changed rows, badges and counters
//  - range selector: swaps the charts without reloading the page
//  - bulk selection on device lists; filters apply on change
(function () {
  "use strict";

  function ago(ms) {
    var s = Math.round((Date.now() - ms) / 1000);
    var future = s < 0;
    s = Math.abs(s);
    if (s < 5) return "just now";
    var t = s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min"
      : s < 86400 ? Math.floor(s / 3600) + " h" : Math.floor(s / 86400) + " d";
    return future ? "in " + t : t + " ago";
  }

  function local(ms) {
    return new Date(ms).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function localiseTimes(root) {
    var els = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var ms = Date.parse(el.getAttribute("datetime"));
      if (isNaN(ms)) continue;
      if (el.classList.contains("rel")) {
        el.textContent = ago(ms);
        el.title = local(ms);
      } else {
        el.textContent = local(ms);
      }
    }
  }

  function fmt(n) { return Math.max(0, n).toLocaleString("en-US"); }

  // Adds `delta` to every counter `key` inside `scope` (an element).
  function bump(scope, key, delta) {
    if (!scope || !key) return;
    var els = scope.querySelectorAll('[data-k="' + key + '"]');
    for (var i = 0; i < els.length; i++) {
      var n = parseInt(els[i].textContent.replace(/,/g, ""), 10) || 0;
      els[i].textContent = fmt(n + delta);
      els[i].classList.add("flash");
    }
  }

  function scopes(site, customer) {
    var out = [document.getElementById("tiles")];
    out.push(document.querySelector('tr[data-scope="site:' + CSS.escape(site) + '"]'));
    out.push(document.querySelector('tr[data-scope="customer:' + CSS.escape(customer) + '"]'));
    return out;
  }

  function setBadge(el, kind, value) {
    if (!el) return;
    el.className = "badge " + kind + "-" + value + " flash";
    el.textContent = value;
  }

  function onDevice(d) {
    var key = d.site_id + "/" + d.device;
    var rows = document.querySelectorAll('[data-key="' + CSS.escape(key) + '"]');
    for (var i = 0; i < rows.length; i++) {
      setBadge(rows[i].querySelector('[data-field="st"]'), "st", d.status);
      rows[i].setAttribute("data-status", d.status);
    }
    if (d.old_status === d.status) return;
    var sc = scopes(d.site_id, d.customer);
    for (var j = 0; j < sc.length; j++) {
      if (d.old_status) bump(sc[j], d.old_status, -1); else bump(sc[j], "devices", 1);
      bump(sc[j], d.status, 1);
    }
  }

  function onAlert(a) {
    var key = a.site_id + "/" + a.alert_id;
    var row = document.querySelector('tr[data-alert="' + CSS.escape(key) + '"]');
    if (row) {
      setBadge(row.querySelector('[data-field="state"]'), "state", a.state);
      row.setAttribute("data-state", a.state);
    } else {
      var note = document.getElementById("new-alerts");
      if (note) note.hidden = false;
    }
    if (a.old_state === a.state) return;
    var sc = scopes(a.site_id, a.customer);
    for (var j = 0; j < sc.length; j++) {
      if (a.old_state === "firing" || a.old_state === "pending") bump(sc[j], "alerts_" + a.old_state, -1);
      if (a.state === "firing" || a.state === "pending") bump(sc[j], "alerts_" + a.state, 1);
    }
    var sev = document.getElementById("firing-by-severity");
    if (a.old_state === "firing") bump(sev, "sev_" + a.severity, -1);
    if (a.state === "firing") bump(sev, "sev_" + a.severity, 1);
  }

  // Commands: a `command` event makes the page read itself again and swap
  // every [data-live-commands] element (the command's state, output and
  // steps; a command list). One read at a time; events that arrive during
  // one cause one more read after it.
  var cmdBusy = false, cmdAgain = false;
  function refreshCommands() {
    if (cmdBusy) { cmdAgain = true; return; }
    cmdBusy = true;
    fetch(location.href, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function (text) {
      var doc = new DOMParser().parseFromString(text, "text/html");
      var parts = document.querySelectorAll("[data-live-commands]");
      for (var i = 0; i < parts.length; i++) {
        var fresh = parts[i].id && doc.getElementById(parts[i].id);
        if (!fresh) continue;
        for (var j = 0; j < fresh.attributes.length; j++) {
          parts[i].setAttribute(fresh.attributes[j].name, fresh.attributes[j].value);
        }
        parts[i].innerHTML = fresh.innerHTML;
        localiseTimes(parts[i]);
      }
    }).catch(function () { /* the next event tries again */ }).then(function () {
      cmdBusy = false;
      if (cmdAgain) { cmdAgain = false; setTimeout(refreshCommands, 100); }
    });
  }

  function onCommand(c) {
    if (!window.fetch || !document.querySelector("[data-live-commands]")) return;
    var page = document.getElementById("command");
    if (page && c.id && c.id !== page.getAttribute("data-command")) return;
    refreshCommands();
  }

  function live() {
    var url = document.body.getAttribute("data-live");
    var dot = document.getElementById("live-status");
    if (!url || !window.EventSource) return;
    var es = new EventSource(url);
    // Once subscribed (and after each reconnect), command parts re-read
    // once: a change made between the page's render and the subscription
    // sent its event to nobody.
    es.onopen = function () { if (dot) dot.className = "live-on"; onCommand({}); };
    es.onerror = function () { if (dot) dot.className = "live-off"; };
    function handler(f) {
      return function (ev) {
        try { f(JSON.parse(ev.data)); } catch (e) { /* a malformed event changes nothing */ }
      };
    }
    es.addEventListener("device", handler(onDevice));
    es.addEventListener("alert", handler(onAlert));
    es.addEventListener("command", handler(onCommand));
    es.addEventListener("reload", function () { es.close(); location.reload(); });
    window.addEventListener("pagehide", function () { es.close(); });
  }

  function rangeSelector() {
    var box = document.getElementById("metrics");
    if (!box || !window.fetch) return;
    box.addEventListener("click", function (ev) {
      var a = ev.target.closest("a[data-range]");
      if (!a) return;
      ev.preventDefault();
      fetch(a.href, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok) throw new Error(r.status);
        return r.text();
      }).then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("metrics");
        if (!fresh) { location.href = a.href; return; }
        box.innerHTML = fresh.innerHTML;
        localiseTimes(box);
        history.replaceState(null, "", a.href);
      }).catch(function () { location.href = a.href; });
    });
  }

  function bulk() {
    var all = document.getElementById("select-all");
    var table = document.getElementById("devices");
    var bar = document.getElementById("bulk-bar");
    if (!all || !table || !bar) return;
    function update() {
      var n = table.querySelectorAll('tbody input[name="device"]:checked').length;
      document.getElementById("bulk-count").textContent = n;
      bar.hidden = n === 0;
    }
    all.addEventListener("change", function () {
      var boxes = table.querySelectorAll('tbody input[name="device"]');
      for (var i = 0; i < boxes.length; i++) boxes[i].checked = all.checked;
      update();
    });
    table.addEventListener("change", function (ev) {
      if (ev.target.name === "device") update();
    });
  }

  function autoFilters() {
    var forms = document.querySelectorAll("form.filters");
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener("change", function (ev) {
        if (ev.target.tagName === "SELECT") ev.currentTarget.submit();
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    localiseTimes();
    setInterval(localiseTimes, 30000);
    live();
    rangeSelector();
    bulk();
    autoFilters();
  });
})();
