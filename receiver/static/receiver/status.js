// The receiver status page: renders the status JSON, then polls it. Values are put in as
// text, never as HTML: AE titles and reasons come from the network.
"use strict";

(function () {
  const root = document.getElementById("receiver-status");
  const url = root.dataset.url;
  const pollMs = parseInt(root.dataset.pollMs, 10) || 3000;
  const SVG = "http://www.w3.org/2000/svg";

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    return td;
  }

  function fillTable(id, rows, columns, emptyText) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = cell(emptyText);
      td.colSpan = columns.length;
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const row of rows) {
      const tr = document.createElement("tr");
      if (row.id !== undefined) tr.dataset.id = row.id;
      for (const column of columns) tr.appendChild(cell(column(row)));
      body.appendChild(tr);
    }
  }

  function when(iso) {
    return new Date(iso).toLocaleString();
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    return s < 120 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
  }

  function chart(points) {
    const width = 720, height = 160, left = 40, bottom = 20, top = 8;
    const plotW = width - left - 4, plotH = height - bottom - top;
    const peak = Math.max(1, ...points.map((p) => p.instances));
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("width", "100%");
    svg.setAttribute("style", "max-width:" + width + "px");
    svg.setAttribute("class", "chart");
    const slot = plotW / Math.max(points.length, 1);
    points.forEach((p, i) => {
      const h = (plotH * p.instances) / peak;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "bar");
      rect.setAttribute("x", (left + i * slot + slot * 0.1).toFixed(1));
      rect.setAttribute("y", (top + plotH - h).toFixed(1));
      rect.setAttribute("width", (slot * 0.8).toFixed(1));
      rect.setAttribute("height", h.toFixed(1));
      rect.setAttribute("fill", "#417690");
      const title = document.createElementNS(SVG, "title");
      title.textContent = new Date(p.minute).toLocaleTimeString() + ": " + p.instances + " instances";
      rect.appendChild(title);
      svg.appendChild(rect);
      if (i % 10 === 0) {
        const label = document.createElementNS(SVG, "text");
        label.setAttribute("x", (left + i * slot).toFixed(1));
        label.setAttribute("y", height - 5);
        label.setAttribute("font-size", "10");
        label.textContent = new Date(p.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
        svg.appendChild(label);
      }
    });
    const axis = document.createElementNS(SVG, "text");
    axis.setAttribute("x", left - 4);
    axis.setAttribute("y", top + 8);
    axis.setAttribute("font-size", "10");
    axis.setAttribute("text-anchor", "end");
    axis.textContent = peak;
    svg.appendChild(axis);
    return svg;
  }

  function render(status) {
    document.getElementById("status-updated").textContent = "Updated " + when(status.now);
    fillTable("receivers", status.receivers, [
      (r) => r.state, (r) => r.ae_title, (r) => r.port, (r) => r.host, (r) => r.pid, (r) => r.role,
      (r) => when(r.started_at),
      (r) => (r.state === "stopped" ? "stopped " + when(r.stopped_at) : r.heartbeat_age + " s ago"),
    ], "No receiver has run in the last 24 hours.");
    fillTable("associations", status.associations, [
      (a) => a.calling_ae_title, (a) => a.called_ae_title, (a) => a.peer, (a) => duration(a.seconds),
      (a) => a.stored, (a) => a.duplicates, (a) => a.failures, (a) => a.bytes, (a) => a.rate,
    ], "None.");
    document.getElementById("gone-module").hidden = status.gone.length === 0;
    fillTable("gone", status.gone, [
      (a) => a.calling_ae_title, (a) => a.called_ae_title, (a) => a.peer, (a) => when(a.started_at),
      (a) => a.stored + a.duplicates,
    ], "None.");
    document.getElementById("per-minute").replaceChildren(chart(status.per_minute));
    fillTable("problems", status.problems, [
      (p) => when(p.started_at), (p) => p.calling_ae_title, (p) => p.peer, (p) => p.outcome,
      (p) => p.reason || Object.entries(p.failures).map(([s, n]) => s + " x" + n).join(", "),
    ], "None.");
    fillTable("forwarding", status.forwarding || [], [
      (f) => f.destination, (f) => f.depth,
      (f) => (f.oldest_pending_seconds === null ? "" : duration(f.oldest_pending_seconds)),
      (f) => f.dead, (f) => f.last_error,
    ], "No forwarding rule or queue.");
    fillTable("forward-failures", status.forward_failures || [], [
      (f) => when(f.next_attempt_at), (f) => f.destination, (f) => f.state, (f) => f.attempts,
      (f) => f.error,
    ], "None.");
  }

  async function poll() {
    try {
      const response = await fetch(url, {
        credentials: "same-origin",
        cache: "no-store",
        // Polling is not activity: it must not keep an unattended session alive.
        headers: { "X-Background-Refresh": "1" },
      });
      if (response.ok) render(await response.json());
    } catch (error) {
      document.getElementById("status-updated").textContent = "Not updated: " + error;
    }
    setTimeout(poll, pollMs);
  }

  render(JSON.parse(document.getElementById("status-initial").textContent));
  setTimeout(poll, pollMs);
})();
