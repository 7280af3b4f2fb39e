// "Your request": what nomapd's model did to send this page, from the
// connection's own counters. The response carried a request id in its
// Server-Timing header (the one thing a page can read about its own
// navigation); the server keeps the figures under that id once the last byte
// is out, and answers /.well-known/nomapd/request/ID with them.
"use strict";
(() => {
  const out = document.getElementById("your-request");
  const note = document.getElementById("your-request-note");
  if (!out || !note) return;
  const nav = performance.getEntriesByType("navigation")[0];
  const timing = nav && nav.serverTiming ? nav.serverTiming.find((e) => e.name === "nomapd") : null;
  if (!timing || !timing.description) {
    note.textContent = "This copy of the page did not come straight from nomapd (your browser's cache, " +
      "or a revalidation): reload it to see its figures.";
    return;
  }
  const n = (v) => Number(v).toLocaleString("en-US");
  const rows = [
    ["status", (r) => String(r.status)],
    ["bytes (head + body)", (r) => n(r.head_bytes) + " + " + n(r.body_bytes)],
    ["TLS", (r) => r.tls === "none" ? "none (plain HTTP)" : r.tls + (r.suite ? ", " + r.suite : "")],
    ["TLS records", (r) => r.tls.startsWith("user-space") ? "framed by OpenSSL, not the model" : n(r.records)],
    ["EXT_PGS (unmapped) mbufs", (r) => n(r.ext_pgs)],
    ["mbufs of every kind", (r) => n(r.mbufs)],
    ["chains converted by ip_output", (r) => n(r.conversions)],
    ["sf_bufs", (r) => n(r.sf_bufs)],
    ["bytes checksummed in software", (r) => n(r.csum_bytes)],
    ["packets (TSO bursts) to the NIC", (r) => n(r.packets)],
    ["bytes on the modeled wire", (r) => n(r.wire_bytes)],
  ];
  const tryFetch = (left) => fetch("/.well-known/nomapd/request/" + encodeURIComponent(timing.description),
    { cache: "no-store" }).then(async (resp) => {
    const r = await resp.json();
    if (resp.ok) {
      const body = out.querySelector("tbody");
      body.replaceChildren(...rows.map(([label, f]) => {
        const tr = document.createElement("tr");
        const th = document.createElement("td");
        const td = document.createElement("td");
        th.textContent = label;
        td.textContent = f(r);
        td.className = "num";
        tr.append(th, td);
        return tr;
      }));
      out.dataset.requestId = r.id;
      out.hidden = false;
      note.textContent = "";
    } else if (r.error === "unknown" && left > 0) {
      setTimeout(() => tryFetch(left - 1), 300);  // the last bytes may still be on their way
    } else {
      note.textContent = r.error === "elsewhere"
        ? "This page was served by worker " + r.worker + ", and this question reached another one: reload to ask again."
        : "The server no longer remembers this response (it keeps the last few hundred): reload it.";
    }
  }).catch((e) => { note.textContent = "Could not ask the server: " + e; });
  tryFetch(5);
})();
