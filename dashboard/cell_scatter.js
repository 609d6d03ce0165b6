// The Explore page's cell scatter: a canvas drawn in the page, no plotting library.
//
// Why not Plotly: a colour change redrew 12k WebGL points through Plotly.react in 170-280 ms of
// the browser's time alone (software rendering), over the 300 ms a colour change may take from
// click to picture. Here a redraw is one canvas pass (10-40 ms at 12k cells), and positions are
// decoded only when they change (data.xy_rev).
//
// data (see dashboard/cell_scatter.py): xy (base64 float32, x0 y0 x1 y1 ...; null when this tab
// already holds the positions of xy_rev), xy_rev, kind
// ("categorical" | "continuous"), codes (base64 int16, -1 = no value) with names and colours, or
// values (base64 float32, NaN = no value) with vmin/vmax; clusters (base64 int16) with
// cluster_names for the hover; label, title, point_size, opacity, height, text_labels
// ([[name, x, y], ...]).
// State sent back: selection = {rev, box: [x0, x1, y0, y1]} or {rev, lasso: [[x, y], ...]} after a
// box or a lasso, in data coordinates; null clears it. The server selects every cell inside the
// region, also those not drawn (above its cap only a random subsample is drawn). Trigger sent:
// need_xy = xy_rev when data.xy is null and this tab does not hold those positions.
// The root's data-drawn counts canvas passes and data-draw-ms times the last one (benchmarks).

const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884",
  "#44bf70", "#7ad151", "#bddf26", "#fde725"];
const MISSING = "#BBBBBB";
const BINS = 64; // continuous values are drawn in this many colour steps, high values last
const LAYER_BITS = 3; // categorical colourings are drawn in 2 ** LAYER_BITS interleaved rounds
const LAYER_STRIDE = 65536; // above every category code (int16)

function decode(b64, Type) {
  // a plain loop: Uint8Array.from(text, callback) took seconds for the 10 MB of 1M positions
  const text = atob(b64 || ""), bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Type(bytes.buffer);
}

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const a = hexToRgb(VIRIDIS[i]), b = hexToRgb(VIRIDIS[i + 1]), f = x - i;
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}

function fmt(v) {
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toPrecision(3);
}

// Styles travel with the markup (the component's own css option did not reach a non-isolated root).
const CSS = `
.atlas-scatter { font-family: "Source Sans Pro", sans-serif; color: #31333F; }
.atlas-title { font-weight: 600; font-size: 1rem; margin: 0 0 0.4rem 0.2rem; }
.atlas-title sup { font-weight: 400; color: #666; }
.atlas-body { display: flex; gap: 0.8rem; }
.atlas-plot { position: relative; flex: 1 1 auto; min-width: 200px; }
.atlas-plot canvas { position: absolute; top: 0; left: 0; }
.atlas-points { pointer-events: none; }
.atlas-overlay { cursor: crosshair; touch-action: none; }
.atlas-tools { position: absolute; top: 4px; right: 4px; display: flex; gap: 2px; }
.atlas-tools button { font-size: 0.72rem; padding: 2px 6px; border: 1px solid #ccc; border-radius: 4px;
  background: rgba(255,255,255,0.9); color: #444; cursor: pointer; }
.atlas-tools button.on { background: #e8e8ef; border-color: #888; color: #000; }
.atlas-tip { position: absolute; pointer-events: none; background: rgba(255,255,255,0.95); border: 1px solid #bbb;
  border-radius: 4px; padding: 3px 6px; font-size: 0.8rem; white-space: nowrap; }
.atlas-key { flex: 0 0 auto; max-width: 34%; max-height: 620px; overflow-y: auto; font-size: 0.82rem; }
.atlas-key-title { font-weight: 600; margin-bottom: 0.3rem; }
.atlas-item { display: flex; align-items: center; gap: 0.35rem; line-height: 1.35; }
.atlas-item span { display: inline-block; width: 10px; height: 10px; border-radius: 50%; flex: 0 0 auto; }
.atlas-bar { display: flex; gap: 0.3rem; height: 300px; }
.atlas-gradient { width: 14px; height: 100%; border: 1px solid #ddd; }
.atlas-ticks { display: flex; flex-direction: column; justify-content: space-between; font-size: 0.75rem; }
`;

function build(root) {
  root.innerHTML = `<style>${CSS}</style>
    <div class="atlas-scatter">
      <div class="atlas-title"></div>
      <div class="atlas-body">
        <div class="atlas-plot">
          <canvas class="atlas-points"></canvas>
          <canvas class="atlas-overlay"></canvas>
          <div class="atlas-tools">
            <button data-mode="lasso" title="Lasso: draw around cells to select them">Lasso</button>
            <button data-mode="box" title="Box: drag a rectangle to select cells">Box</button>
            <button data-mode="pan" title="Pan: drag to move; the wheel zooms">Pan</button>
            <button data-action="reset" title="Show all cells (double-click does the same)">Reset</button>
          </div>
          <div class="atlas-tip" hidden></div>
        </div>
        <div class="atlas-key"></div>
      </div>
    </div>`;
  const q = (s) => root.querySelector(s);
  return { root: q(".atlas-scatter"), title: q(".atlas-title"), plot: q(".atlas-plot"),
    points: q(".atlas-points"), overlay: q(".atlas-overlay"), tip: q(".atlas-tip"), key: q(".atlas-key"),
    tools: q(".atlas-tools"), mode: "lasso", view: null, drawn: 0 };
}

// The positions last received, per browser tab: they outlive this element (a page switch unmounts
// it), and the server sends them only when they change (data.xy is null otherwise).
const HELD = "__atlasScatterPositions";

export default function (component) {
  const { data, parentElement, setStateValue, setTriggerValue } = component;
  const host = parentElement;
  let s = host.__atlasScatter;
  if (!s || !host.contains(s.root)) {
    s = host.__atlasScatter = build(host);
    wire(s, setStateValue);
  }
  s.setStateValue = setStateValue;
  if (s.rev !== data.xy_rev) {
    if (data.xy) window[HELD] = { rev: data.xy_rev, xy: decode(data.xy, Float32Array) };
    const held = window[HELD];
    if (!held || held.rev !== data.xy_rev) {
      setTriggerValue("need_xy", data.xy_rev); // this tab lost them: the server sends them again
      return;
    }
    s.xy = held.xy;
    s.rev = data.xy_rev;
    s.view = null; // new positions: show them all
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < s.xy.length; i += 2) {
      const x = s.xy[i], y = s.xy[i + 1];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    const pad = 0.04 * Math.max(x1 - x0, y1 - y0, 1e-9);
    s.bounds = [x0 - pad, x1 + pad, y0 - pad, y1 + pad];
  }
  s.data = data;
  s.clusters = decode(data.clusters, Int16Array);
  if (data.kind === "categorical") {
    s.codes = decode(data.codes, Int16Array);
    s.values = null;
  } else {
    s.values = decode(data.values, Float32Array);
    s.codes = null;
  }
  s.title.innerHTML = data.title || "";
  s.plot.style.height = `${data.height}px`;
  drawKey(s);
  draw(s);
}

function drawKey(s) {
  const d = s.data;
  if (d.kind === "categorical") {
    const items = d.names.map((name, i) =>
      `<div class="atlas-item"><span style="background:${d.colours[i]}"></span>${escapeHtml(name)}</div>`);
    if (d.has_missing) items.push(`<div class="atlas-item"><span style="background:${MISSING}"></span>(no value)</div>`);
    s.key.innerHTML = `<div class="atlas-key-title">${escapeHtml(d.label)}</div>${items.join("")}`;
  } else {
    const stops = VIRIDIS.map((c, i) => `${c} ${(100 * i) / (VIRIDIS.length - 1)}%`).join(",");
    const ticks = [d.vmax, (d.vmin + d.vmax) / 2, d.vmin].map((v) => `<div>${fmt(v)}</div>`).join("");
    s.key.innerHTML = `<div class="atlas-key-title">${escapeHtml(d.label)}</div>
      <div class="atlas-bar"><div class="atlas-gradient" style="background:linear-gradient(to top,${stops})"></div>
      <div class="atlas-ticks">${ticks}</div></div>`;
  }
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// The drawing round of point i: the top bits of a mixing hash of i (murmur3's finaliser; a plain
// multiplicative hash gives points a fixed distance apart rounds a fixed distance apart).
function layer(i) {
  let h = i ^ (i >>> 16);
  h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35); h ^= h >>> 16;
  return h >>> (32 - LAYER_BITS);
}

// Data -> canvas pixels (CSS pixels), keeping x and y on one scale like Plotly's scaleanchor.
function transform(s) {
  const w = s.plot.clientWidth, h = s.data.height;
  const [x0, x1, y0, y1] = s.view || s.bounds;
  const k = Math.min(w / (x1 - x0), h / (y1 - y0));
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  return { w, h, k, toX: (x) => w / 2 + (x - cx) * k, toY: (y) => h / 2 - (y - cy) * k,
    fromX: (px) => cx + (px - w / 2) / k, fromY: (py) => cy - (py - h / 2) / k };
}

function draw(s) {
  const started = performance.now();
  const d = s.data, t = transform(s), ratio = window.devicePixelRatio || 1;
  for (const c of [s.points, s.overlay]) {
    c.width = Math.round(t.w * ratio); c.height = Math.round(t.h * ratio);
    c.style.width = `${t.w}px`; c.style.height = `${t.h}px`;
  }
  const ctx = s.points.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, t.w, t.h);
  ctx.globalAlpha = d.opacity;
  const n = s.xy.length / 2, r = d.point_size / 2, xy = s.xy;
  // one path per colour: a fill per colour, not per point. Categories are drawn in rounds of
  // pseudo-randomly chosen points each (layer), so where categories overlap none lies on top of the
  // others (drawn whole one after another, the last would hide the rest); missing values first.
  const groups = new Map();
  const colourOf = [];
  if (s.codes) {
    d.colours.forEach((c) => colourOf.push(c));
    for (let i = 0; i < n; i++) {
      const code = s.codes[i];
      const g = code < 0 ? -1 : layer(i) * LAYER_STRIDE + code;
      (groups.get(g) || groups.set(g, []).get(g)).push(i);
    }
  } else {
    const span = d.vmax - d.vmin || 1;
    for (let b = 0; b < BINS; b++) colourOf.push(viridis((b + 0.5) / BINS));
    colourOf.push(MISSING);
    for (let i = 0; i < n; i++) {
      const v = s.values[i];
      const g = Number.isNaN(v) ? -1 : Math.min(BINS - 1, Math.max(0, Math.floor(((v - d.vmin) / span) * BINS)));
      (groups.get(g) || groups.set(g, []).get(g)).push(i);
    }
  }
  const keys = [...groups.keys()].sort((a, b) => a - b); // missing (-1) first; layers, or high values last
  const tiny = r < 1.6;
  for (const g of keys) {
    ctx.fillStyle = g < 0 ? MISSING : colourOf[s.codes ? g % LAYER_STRIDE : g];
    ctx.beginPath();
    for (const i of groups.get(g)) {
      const x = t.toX(xy[2 * i]), y = t.toY(xy[2 * i + 1]);
      if (x < -r || y < -r || x > t.w + r || y > t.h + r) continue;
      if (tiny) ctx.rect(x - r, y - r, 2 * r, 2 * r);
      else { ctx.moveTo(x + r, y); ctx.arc(x, y, r, 0, 2 * Math.PI); }
    }
    ctx.fill();
  }
  ctx.globalAlpha = 1;
  if (d.text_labels) {
    ctx.font = "bold 12px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.lineWidth = 3; ctx.strokeStyle = "rgba(255,255,255,0.85)"; ctx.fillStyle = "#222";
    for (const [name, x, y] of d.text_labels) {
      ctx.strokeText(name, t.toX(x), t.toY(y)); ctx.fillText(name, t.toX(x), t.toY(y));
    }
  }
  s.grid = null; // the hover index follows the new picture
  s.drawn += 1;
  s.root.dataset.drawMs = (performance.now() - started).toFixed(1);
  s.root.dataset.points = String(n);
  s.root.dataset.drawn = String(s.drawn);
  s.root.dataset.label = d.label;
}

// Hover: nearest drawn point within a few pixels, through a grid of 16-pixel cells.
function nearest(s, px, py) {
  const t = transform(s), cell = 16;
  if (!s.grid) {
    s.grid = new Map();
    for (let i = 0; i < s.xy.length / 2; i++) {
      const x = t.toX(s.xy[2 * i]), y = t.toY(s.xy[2 * i + 1]);
      if (x < 0 || y < 0 || x > t.w || y > t.h) continue;
      const k = Math.floor(x / cell) * 65536 + Math.floor(y / cell);
      (s.grid.get(k) || s.grid.set(k, []).get(k)).push(i);
    }
  }
  let best = -1, bestD = Math.max(6, s.data.point_size) ** 2;
  const gx = Math.floor(px / cell), gy = Math.floor(py / cell);
  for (let dx = -1; dx <= 1; dx++) for (let dy = -1; dy <= 1; dy++) {
    for (const i of s.grid.get((gx + dx) * 65536 + gy + dy) || []) {
      const d2 = (t.toX(s.xy[2 * i]) - px) ** 2 + (t.toY(s.xy[2 * i + 1]) - py) ** 2;
      if (d2 <= bestD) { best = i; bestD = d2; }
    }
  }
  return best;
}

function tipText(s, i) {
  const d = s.data, c = s.clusters[i];
  const lines = [`cluster: ${c >= 0 ? d.cluster_names[c] : "(none)"}`];
  if (s.codes) {
    if (d.label.toLowerCase() !== "cluster") lines.push(`${d.label}: ${s.codes[i] >= 0 ? d.names[s.codes[i]] : "(no value)"}`);
  } else {
    const v = s.values[i];
    lines.push(`${d.label}: ${Number.isNaN(v) ? "(no value)" : fmt(v)}`);
  }
  return lines.map(escapeHtml).join("<br>");
}

function wire(s, setStateValue) {
  const ov = s.overlay, octx = () => ov.getContext("2d");
  const setMode = (mode) => {
    s.mode = mode;
    s.tools.querySelectorAll("button[data-mode]").forEach((b) => b.classList.toggle("on", b.dataset.mode === mode));
  };
  setMode("lasso");
  s.tools.addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    if (b.dataset.mode) setMode(b.dataset.mode);
    if (b.dataset.action === "reset") { s.view = null; draw(s); }
  });
  let drag = null;
  const at = (e) => { const r = ov.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  ov.addEventListener("pointerdown", (e) => {
    ov.setPointerCapture(e.pointerId);
    const p = at(e);
    drag = { start: p, path: [p], view: (s.view || s.bounds).slice() };
    s.tip.hidden = true;
  });
  ov.addEventListener("pointermove", (e) => {
    const p = at(e);
    if (!drag) {
      const i = nearest(s, p[0], p[1]);
      if (i < 0) { s.tip.hidden = true; return; }
      s.tip.innerHTML = tipText(s, i);
      s.tip.style.left = `${p[0] + 12}px`; s.tip.style.top = `${p[1] + 12}px`;
      s.tip.hidden = false;
      return;
    }
    drag.path.push(p);
    const ctx = octx(), ratio = window.devicePixelRatio || 1;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, ov.width, ov.height);
    if (s.mode === "pan") {
      const t = transform(s), dx = (p[0] - drag.start[0]) / t.k, dy = (p[1] - drag.start[1]) / t.k;
      const [x0, x1, y0, y1] = drag.view;
      s.view = [x0 - dx, x1 - dx, y0 + dy, y1 + dy];
      draw(s);
      return;
    }
    ctx.strokeStyle = "#333"; ctx.setLineDash([4, 3]); ctx.fillStyle = "rgba(80,80,80,0.08)";
    ctx.beginPath();
    if (s.mode === "box") {
      ctx.rect(drag.start[0], drag.start[1], p[0] - drag.start[0], p[1] - drag.start[1]);
    } else {
      drag.path.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
    }
    ctx.fill(); ctx.stroke();
  });
  ov.addEventListener("pointerup", (e) => {
    if (!drag) return;
    const p = at(e), d = drag;
    drag = null;
    octx().clearRect(0, 0, ov.width, ov.height);
    if (s.mode === "pan") return;
    const moved = Math.hypot(p[0] - d.start[0], p[1] - d.start[1]) > 3;
    if (!moved) { s.setStateValue("selection", null); return; } // a click clears the selection
    // The region in data coordinates: the server finds every cell in it, drawn or not.
    // (kept as s.region too, so a browser test can count the cells inside itself)
    const t = transform(s);
    if (s.mode === "box") {
      const xs = [t.fromX(d.start[0]), t.fromX(p[0])], ys = [t.fromY(d.start[1]), t.fromY(p[1])];
      s.region = { rev: s.rev, box: [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)] };
    } else {
      if (d.path.length < 3) return;
      s.region = { rev: s.rev, lasso: d.path.map(([px, py]) => [t.fromX(px), t.fromY(py)]) };
    }
    s.setStateValue("selection", s.region);
  });
  ov.addEventListener("pointerleave", () => { s.tip.hidden = true; });
  ov.addEventListener("dblclick", () => { s.view = null; draw(s); });
  ov.addEventListener("wheel", (e) => {
    e.preventDefault();
    const t = transform(s), [px, py] = at(e), f = Math.exp(e.deltaY * 0.0015);
    const fx = t.fromX(px), fy = t.fromY(py), [x0, x1, y0, y1] = s.view || s.bounds;
    s.view = [fx + (x0 - fx) * f, fx + (x1 - fx) * f, fy + (y0 - fy) * f, fy + (y1 - fy) * f];
    draw(s);
  }, { passive: false });
  new ResizeObserver(() => { if (s.data) draw(s); }).observe(s.plot);
}
