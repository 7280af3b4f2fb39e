// nomapd's live dashboard: polls the admin listener once a second and draws
// the data path's rates, the last minutes (server-side history), nm0's
// options and the open connections. No library: DOM and SVG by hand.
// Control (flipping nm0's options) needs the token the server printed with
// --admin-control, passed as #token=... in the URL; it is kept in memory only
// and removed from the address bar.
"use strict";

(() => {
  const POLL_MS = 1000;
  const SVG = "http://www.w3.org/2000/svg";
  let token = null;
  {
    const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
    if (m) {
      token = decodeURIComponent(m[1]);
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  // Rates derived from /stats/history, by the element's data-metric.
  const BYTES = new Set(["ktls.bytes_encrypted", "tcp.sndbyte", "ip.sw_csum_bytes", "ifnet.tx_bytes"]);
  const CHARTS = [
    ["ifnet.tx_bytes", "wire bytes/s"],
    ["ktls.records_framed", "TLS records/s"],
    ["mbuf.ext_pgs_total", "EXT_PGS mbufs/s"],
    ["ip.unmapped_converted", "conversions/s"],
    ["sfbuf.total", "sf_bufs/s"],
    ["ip.sw_csum_bytes", "checksummed bytes/s"],
    ["server.cpu_seconds", "server CPU"],
    ["server.requests", "requests/s"],
  ];

  function fmt(v, key) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (key === "server.cpu_seconds") return (100 * v).toFixed(0) + " %";
    const unit = BYTES.has(key) ? "B" : "";
    const abs = Math.abs(v);
    for (const [n, p] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
      if (abs >= n) return (v / n).toFixed(abs >= 10 * n ? 0 : 1) + " " + p + unit;
    }
    return (abs >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)) + (unit ? " " + unit : "");
  }

  // Per-second rates between consecutive samples: {key: [rate, ...]}.
  function rates(hist) {
    const keys = hist.keys, rows = hist.samples, out = {};
    keys.forEach((k) => { out[k] = []; });
    out.mapped = [];
    for (let i = 1; i < rows.length; i++) {
      const dt = rows[i][0] - rows[i - 1][0];
      if (dt <= 0) continue;
      for (let j = 1; j < keys.length; j++) {
        const k = keys[j];
        const r = k === "server.connections_active" ? rows[i][j] : (rows[i][j] - rows[i - 1][j]) / dt;
        out[k].push(Math.max(0, r));
      }
      const ext = out["mbuf.ext_pgs_total"], all = out["mbuf.mbufs_total"];
      out.mapped.push(Math.max(0, all[all.length - 1] - ext[ext.length - 1]));
    }
    return out;
  }

  function el(tag, attrs, text) {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  const charts = {};
  function makeCharts() {
    const box = document.getElementById("charts");
    for (const [key, title] of CHARTS) {
      const now = el("span", { class: "now", "data-chart-now": key }, "–");
      const head = el("div", { class: "title" });
      head.append(el("span", {}, title), now);
      const svg = el("svg:svg", { viewBox: "0 0 300 70", preserveAspectRatio: "none", role: "img",
        "aria-label": title + ", last minutes" });
      const base = el("svg:line", { x1: 0, y1: 69, x2: 300, y2: 69 });
      const line = el("svg:polyline", { points: "", "data-chart": key });
      svg.append(base, line);
      const max = el("span", { class: "muted" }, "");
      const card = el("div", { class: "chart" });
      card.append(head, svg, max);
      box.append(card);
      charts[key] = { line, now, max };
    }
  }

  function drawCharts(r, span) {
    for (const [key] of CHARTS) {
      const c = charts[key], v = r[key] || [];
      const top = Math.max(1e-9, ...v);
      const n = Math.max(span, 2);
      const off = n - v.length;
      c.line.setAttribute("points", v.map((y, i) =>
        ((off + i) * 300 / (n - 1)).toFixed(1) + "," + (68 - 66 * y / top).toFixed(1)).join(" "));
      c.now.textContent = fmt(v[v.length - 1], key);
      c.max.textContent = v.length ? "peak " + fmt(top, key) + " over " + v.length + " s" : "";
    }
  }

  function drawRates(r, stats, conns) {
    for (const dd of document.querySelectorAll("[data-metric]")) {
      const key = dd.dataset.metric;
      let v;
      if (key === "sockbuf_bytes") v = conns.reduce((s, c) => s + (c.sockbuf_bytes || 0), 0);
      else if (key === "server.connections_active") v = stats[key];
      else { const s = r[key]; v = s && s.length ? s[s.length - 1] : null; }
      dd.textContent = key === "sockbuf_bytes" ? fmt(v, "ifnet.tx_bytes") : fmt(v, key);
      dd.classList.toggle("hot", (key === "ip.unmapped_converted" || key === "ip.sw_csum_bytes") && v > 0);
    }
  }

  // nm0's options: GET /ifconfig when the server has it, else /stats' ifnet.capenable.
  let ifconfigMissing = false;
  async function options(stats) {
    if (!ifconfigMissing) {
      const r = await fetch("/ifconfig", { cache: "no-store" });
      if (r.ok) {
        const j = await r.json();
        const nm = j.nm0 || j[Object.keys(j)[0]] || {};
        let o = nm.options !== undefined ? nm.options : nm;
        if (typeof o === "string") o = o.replace(/^.*</, "").replace(/>.*$/, "").split(",");
        if (Array.isArray(o)) return o.filter(Boolean);
      } else if (r.status === 404) {
        ifconfigMissing = true;
      }
    }
    return (stats["ifnet.capenable"] || []).map((c) => c.replace(/^IFCAP_/, ""));
  }

  const CAPS = { nomap: ["NOMAP", "MEXTPG"], txcsum: ["TXCSUM"], tso: ["TSO4"] };
  function drawOptions(opts) {
    document.getElementById("ifopts").textContent = "<" + opts.join(",") + ">";
    if (!token) return;
    document.getElementById("controls").hidden = false;
    document.getElementById("readonly").hidden = true;
    for (const b of document.querySelectorAll("button[data-cap]")) {
      const cap = b.dataset.cap;
      const on = CAPS[cap].some((c) => opts.includes(c));
      b.classList.toggle("on", on);
      b.dataset.on = on ? "1" : "0";
      b.textContent = (on ? "−" : "+") + cap + (on ? " (turn off)" : " (turn on)");
    }
  }

  async function flip(b) {
    const cap = b.dataset.cap, arg = (b.dataset.on === "1" ? "-" : "") + cap;
    const msg = document.getElementById("ctlmsg");
    b.disabled = true;
    try {
      const r = await fetch("/ifconfig", {
        method: "POST", cache: "no-store",
        headers: { Authorization: "Bearer " + token, "Content-Type": "text/plain" },
        body: "nm0 " + arg,
      });
      msg.textContent = r.ok ? "ifconfig nm0 " + arg : "ifconfig nm0 " + arg + ": " + r.status + " " + (await r.text()).trim();
    } catch (e) {
      msg.textContent = "ifconfig nm0 " + arg + ": " + e;
    } finally {
      b.disabled = false;
      tick();
    }
  }

  function drawConns(conns) {
    const body = document.querySelector("#conns tbody");
    const rows = conns.slice().sort((a, b) => (b.bytes_written || 0) - (a.bytes_written || 0)).slice(0, 50);
    body.replaceChildren(...rows.map((c) => {
      const tr = el("tr");
      tr.append(
        el("td", {}, String(c.peer) + (c.worker !== undefined ? " (w" + c.worker + ")" : "")),
        el("td", {}, c.tls ? c.tls + (c.suite ? " " + c.suite : "") : "–"),
        el("td", { class: "num" }, String(c.requests ?? "")),
        el("td", { class: "num" }, fmt(c.bytes_written || 0, "ifnet.tx_bytes")),
        el("td", { class: "num" }, fmt(c.sockbuf_bytes || 0, "ifnet.tx_bytes")),
        el("td", { class: "num" }, c.tx_records !== undefined ? String(c.tx_records) : "–"));
      return tr;
    }));
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: 6, class: "muted" }, "none open"));
      body.append(tr);
    }
  }

  async function getJSON(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }

  let busy = false;
  async function tick() {
    if (busy) return;
    busy = true;
    const status = document.getElementById("status");
    try {
      const [stats, conns, hist] = await Promise.all([getJSON("/stats"), getJSON("/connections"), getJSON("/stats/history")]);
      const r = rates(hist);
      drawRates(r, stats, conns);
      drawCharts(r, hist.samples.length > 0 ? 300 : 2);
      drawConns(conns);
      drawOptions(await options(stats));
      document.getElementById("facts").textContent = "mode " + stats["server.mode"] + " · core " + stats["server.core"] +
        (stats["server.workers"] ? " · " + stats["server.workers"] + " workers" : "");
      status.textContent = "live · " + new Date().toLocaleTimeString();
      status.classList.remove("stale");
    } catch (e) {
      status.textContent = "no answer from the server (" + e.message + ")";
      status.classList.add("stale");
    } finally {
      busy = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    makeCharts();
    for (const b of document.querySelectorAll("button[data-cap]")) b.addEventListener("click", () => flip(b));
    tick();
    setInterval(tick, POLL_MS);
  });
})();
