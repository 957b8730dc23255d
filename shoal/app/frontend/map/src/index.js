// Shoal's Map: a Streamlit component (st.components.v2) around regl-scatterplot.
//
// Python sends one binary payload (see shoal/app/scatter.py, encode_map_payload):
//   "SHM1" | uint32 header length | header JSON (utf-8) | padding to 4 bytes |
//   x float32[n] | y float32[n] | colour code uint8[n]
// Coordinates are already normalised to [-1, 1] (regl-scatterplot's own space), so a drawn
// polygon comes back in the same space and Python maps it to data coordinates.
//
// Back to Python (trigger "selection"): {kind, polygon, count, rows} where rows is the sorted
// selected indices as base64 of a little-endian Uint32Array (not a JSON list), and polygon the
// drawn box or lasso in the normalised space (null for a clicked point).
// For tests and the benchmark the page exposes window.shoalMapDrawn ({id, n, ms}) once drawn,
// window.shoalMapSelected (points highlighted), and the times of the last mouse-up and send.
//
// Hover cards: when the pointer rests on a point (any tool), the nearest point within a few
// pixels is found here (one pass over the typed arrays: regl-scatterplot's own hover would
// redraw every point) and its card fetched from the app server by index (header.card: the
// URLs of shoal/app/details.py's routes); window.shoalMapCard says which card is shown.
import createScatterplot from "regl-scatterplot";

const MAGIC = "SHM1";
const STATES = new WeakMap();
const CSS = `
.shoal-map { position: relative; width: 100%; font-family: inherit; }
.shoal-map canvas { display: block; width: 100%; border-radius: 6px; background: #fff; }
.shoal-map-toolbar { position: absolute; top: 8px; left: 8px; display: flex; gap: 4px; z-index: 3; }
.shoal-map-toolbar button { font: 13px sans-serif; padding: 4px 8px; border: 1px solid #bbb;
  border-radius: 4px; background: #fff; cursor: pointer; }
.shoal-map-toolbar button[aria-pressed="true"] { background: #1f4e79; color: #fff; border-color: #1f4e79; }
.shoal-map-legend { position: absolute; top: 8px; right: 8px; max-height: 560px; overflow: auto;
  background: rgba(255,255,255,0.9); border: 1px solid #ddd; border-radius: 4px; padding: 6px 8px;
  font: 12px sans-serif; z-index: 3; }
.shoal-map-legend .row { display: flex; align-items: center; gap: 6px; white-space: nowrap; }
.shoal-map-legend .swatch { width: 10px; height: 10px; border-radius: 50%; flex: none; }
.shoal-map-legend .ramp { width: 140px; height: 10px; }
.shoal-map-status { position: absolute; bottom: 6px; left: 8px; font: 12px sans-serif; color: #444;
  background: rgba(255,255,255,0.8); padding: 2px 6px; border-radius: 4px; z-index: 3; }
.shoal-map-lasso { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none;
  z-index: 2; display: none; }
.shoal-map-lasso polyline { fill: rgba(31,78,121,0.12); stroke: #1f4e79; stroke-width: 1.5;
  stroke-dasharray: 4 3; }
.shoal-map-box { position: absolute; border: 1px dashed #1f4e79; background: rgba(31,78,121,0.12);
  pointer-events: none; z-index: 2; display: none; }
.shoal-map-card { position: absolute; z-index: 4; display: none; max-width: 240px; padding: 6px 8px;
  background: #fff; border: 1px solid #ccc; border-radius: 6px; box-shadow: 0 2px 8px rgba(0,0,0,.15);
  font: 12px sans-serif; color: #333; pointer-events: none; }
.shoal-map-card img { display: block; max-width: 160px; max-height: 160px; margin-bottom: 4px;
  border-radius: 4px; }
.shoal-map-card .title { font-weight: 600; margin-bottom: 2px; }
.shoal-map-card .line { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
`;
// How long the pointer rests before a card is looked up, and how near a point must be.
const HOVER_MS = 150;
const HOVER_PX = 8;
const CARD_WIDTH = 250;
const CARDS_KEPT = 500;

function decode(data) {
  const bytes =
    data instanceof Uint8Array
      ? data
      : data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const magic = String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]);
  if (magic !== MAGIC) throw new Error("shoal map: not a map payload");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const n = header.n;
  let offset = 8 + headerLength;
  offset += (4 - (offset % 4)) % 4;
  // Copy into fresh, aligned buffers: the message buffer's byteOffset need not be aligned.
  const floats = new Float32Array(2 * n);
  new Uint8Array(floats.buffer).set(bytes.subarray(offset, offset + 8 * n));
  const codes = bytes.slice(offset + 8 * n, offset + 9 * n);
  return { header, x: floats.subarray(0, n), y: floats.subarray(n, 2 * n), codes };
}

function rowsToBase64(points) {
  const rows = Uint32Array.from(points).sort();
  const bytes = new Uint8Array(rows.buffer);
  let text = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  }
  return { rows: btoa(text), count: rows.length };
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderLegend(legend, node) {
  node.replaceChildren();
  if (!legend) {
    node.style.display = "none";
    return;
  }
  node.style.display = "block";
  node.appendChild(el("div", { style: "font-weight:600;margin-bottom:4px" }, legend.title));
  if (legend.kind === "categorical") {
    for (const [label, colour, count] of legend.items) {
      const row = el("div", { class: "row" });
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colour;
      row.append(swatch, el("span", {}, `${label} (${count.toLocaleString("en-US")})`));
      node.appendChild(row);
    }
  } else {
    const ramp = el("div", { class: "ramp" });
    ramp.style.background = `linear-gradient(to right, ${legend.stops.join(",")})`;
    const labels = el("div", { class: "row", style: "justify-content:space-between" });
    labels.append(el("span", {}, legend.min), el("span", {}, legend.max));
    node.append(ramp, labels);
    if (legend.missing) {
      const row = el("div", { class: "row" });
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = legend.missing_colour;
      row.append(swatch, el("span", {}, `missing (${legend.missing.toLocaleString("en-US")})`));
      node.appendChild(row);
    }
  }
}

function build(parentElement) {
  const root = el("div", { class: "shoal-map", "data-testid": "shoalMap" });
  root.appendChild(el("style", {}, CSS));
  const toolbar = el("div", { class: "shoal-map-toolbar", role: "toolbar", "aria-label": "Map tools" });
  const tools = {
    pan: el("button", { type: "button", title: "Pan and zoom", "aria-label": "Pan and zoom" }, "Pan"),
    box: el("button", { type: "button", title: "Box select", "aria-label": "Box select" }, "Box select"),
    lasso: el("button", { type: "button", title: "Lasso select", "aria-label": "Lasso select" }, "Lasso"),
  };
  const reset = el("button", { type: "button", title: "Reset view", "aria-label": "Reset view" }, "Reset");
  toolbar.append(tools.pan, tools.box, tools.lasso, reset);
  const canvas = el("canvas", { "aria-label": "Map of the samples" });
  const box = el("div", { class: "shoal-map-box" });
  const svgNs = "http://www.w3.org/2000/svg";
  const lasso = document.createElementNS(svgNs, "svg");
  lasso.setAttribute("class", "shoal-map-lasso");
  const lassoLine = document.createElementNS(svgNs, "polyline");
  lasso.appendChild(lassoLine);
  const legend = el("div", { class: "shoal-map-legend" });
  const status = el("div", { class: "shoal-map-status", "data-testid": "shoalMapStatus" }, "Loading…");
  const card = el("div", { class: "shoal-map-card", "data-testid": "shoalMapCard", role: "tooltip" });
  root.append(toolbar, canvas, box, lasso, legend, status, card);
  parentElement.appendChild(root);
  return { root, tools, reset, canvas, box, lasso, lassoLine, legend, status, card };
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (!data) return undefined;
  let state = STATES.get(parentElement);
  if (!state) {
    state = { dom: build(parentElement), plot: null, pointsId: null, epoch: null, applied: null };
    STATES.set(parentElement, state);
  }
  const started = performance.now();
  const { header, x, y, codes } = decode(data);
  state.send = setTriggerValue;
  const { dom } = state;
  dom.canvas.style.height = `${header.height}px`;

  if (!state.plot) {
    const plot = createScatterplot({
      canvas: dom.canvas,
      width: "auto",
      height: "auto",
      pointSize: header.point_size,
      pointSizeSelected: 1,
      pointOutlineWidth: 1,
      opacityBy: "density",
      lassoInitiator: false,
      lassoOnLongPress: false,
      deselectOnDblClick: true,
      deselectOnEscape: true,
      lassoColor: "#1f4e79",
      backgroundColor: "#ffffff",
      pointColorActive: "#111111",
      opacityInactiveMax: 0.35,
      syncEvents: true,
    });
    state.plot = plot;
    state.pending = null;
    // Clicks on a point and double-click deselection come from regl-scatterplot's own events.
    const flush = () => {
      const pending = state.pending;
      state.pending = null;
      window.shoalMapSelected = pending === null ? 0 : pending.length;
      if (pending === null || !pending.length) {
        state.send("selection", { kind: "none", count: 0, rows: "" });
        return;
      }
      const { rows, count } = rowsToBase64(pending);
      window.shoalMapSelectionSentAt = performance.now();
      state.send("selection", { kind: "point", count, rows, polygon: null, n: state.n });
    };
    // Events are synchronous (syncEvents): a microtask sends them before the next (slow,
    // software) frame is drawn.
    let queued = false;
    const schedule = () => {
      if (queued) return;
      queued = true;
      queueMicrotask(() => {
        queued = false;
        flush();
      });
    };
    plot.subscribe("select", ({ points }) => {
      if (state.viewOnly) return;
      state.pending = points;
      schedule();
    });
    plot.subscribe("deselect", () => {
      state.pending = null;
      schedule();
    });

    const setTool = (name) => {
      state.tool = name;
      for (const [key, button] of Object.entries(dom.tools)) {
        button.setAttribute("aria-pressed", String(key === name));
      }
      dom.canvas.style.cursor = name === "pan" ? "grab" : "crosshair";
    };
    dom.tools.pan.addEventListener("click", () => setTool("pan"));
    dom.tools.box.addEventListener("click", () => setTool("box"));
    dom.tools.lasso.addEventListener("click", () => setTool("lasso"));
    dom.reset.addEventListener("click", () => plot.reset());
    state.setTool = setTool;
    setTool("box");

    // Box and lasso: our own drag (regl-scatterplot only draws). On mouse-up the points inside
    // are found here (one pass over the typed arrays), sent to Python, and only then
    // highlighted: with software WebGL a redraw of 1M points holds the page for a second, and
    // Streamlit sends the event from a timer that would wait behind it.
    let drag = null;
    let press = null;
    const toGl = (clientX, clientY) => {
      // The view is an affine map (no rotation): recover it from two drawn points.
      const [a, b] = state.anchors;
      const sa = plot.getScreenPosition(a);
      const sb = plot.getScreenPosition(b);
      const rect = dom.canvas.getBoundingClientRect();
      const px = clientX - rect.left;
      const py = clientY - rect.top;
      const gx = state.x[a] + ((px - sa[0]) * (state.x[b] - state.x[a])) / (sb[0] - sa[0]);
      const gy = state.y[a] + ((py - sa[1]) * (state.y[b] - state.y[a])) / (sb[1] - sa[1]);
      return [gx, gy];
    };
    // Hover cards (see the top of this file).
    let hoverTimer = null;
    let shownAt = null;
    const cards = new Map();
    const hideCard = () => {
      state.hovered = -1;
      shownAt = null;
      dom.card.style.display = "none";
      dom.card.replaceChildren(); // no stale text for a page search to find
    };
    const nearest = (clientX, clientY) => {
      if (!state.anchors || !state.x) return -1;
      const [a, b] = state.anchors;
      const sa = plot.getScreenPosition(a);
      const sb = plot.getScreenPosition(b);
      const rx = Math.abs((HOVER_PX * (state.x[b] - state.x[a])) / (sb[0] - sa[0]));
      const ry = Math.abs((HOVER_PX * (state.y[b] - state.y[a])) / (sb[1] - sa[1]));
      if (!(rx > 0 && ry > 0)) return -1;
      const [gx, gy] = toGl(clientX, clientY);
      const { x, y } = state;
      let best = -1;
      let bestDistance = 1; // (dx / rx)^2 + (dy / ry)^2: inside the ellipse of HOVER_PX
      for (let i = 0; i < x.length; i++) {
        const dx = (x[i] - gx) / rx;
        if (dx > 1 || dx < -1) continue;
        const dy = (y[i] - gy) / ry;
        if (dy > 1 || dy < -1) continue;
        const distance = dx * dx + dy * dy;
        if (distance <= bestDistance) {
          bestDistance = distance;
          best = i;
        }
      }
      return best;
    };
    const showCard = async (index, left, top) => {
      state.hovered = index;
      let entry = cards.get(index);
      if (!entry) {
        entry = fetch(`${state.card.point}&i=${index}`, { credentials: "same-origin" })
          .then((response) => (response.ok ? response.json() : null))
          .catch(() => null);
        cards.set(index, entry);
        if (cards.size > CARDS_KEPT) cards.delete(cards.keys().next().value);
      }
      const info = await entry;
      if (state.hovered !== index || !info) return;
      const nodes = [];
      if (info.thumbnail) {
        const image = el("img", { alt: String(info.id) });
        image.src = `${state.card.thumb}&i=${index}`;
        nodes.push(image);
      }
      if (info.title) nodes.push(el("div", { class: "title" }, info.title));
      for (const line of info.lines) nodes.push(el("div", { class: "line" }, line));
      dom.card.replaceChildren(...nodes);
      const width = dom.root.getBoundingClientRect().width;
      Object.assign(dom.card.style, {
        display: "block",
        left: `${left + 14 + CARD_WIDTH > width ? Math.max(0, left - CARD_WIDTH - 14) : left + 14}px`,
        top: `${top + 14}px`,
      });
      window.shoalMapCard = { index, row: info.row, id: info.id };
    };
    const onHover = (event) => {
      clearTimeout(hoverTimer);
      const rect = dom.canvas.getBoundingClientRect();
      const inside =
        event.clientX >= rect.left &&
        event.clientX <= rect.right &&
        event.clientY >= rect.top &&
        event.clientY <= rect.bottom;
      if (!state.card || drag || event.buttons || !inside || !dom.root.isConnected) {
        if (state.hovered >= 0) hideCard();
        return;
      }
      if (shownAt && Math.hypot(event.clientX - shownAt[0], event.clientY - shownAt[1]) > 4) {
        hideCard();
      }
      hoverTimer = setTimeout(() => {
        const index = nearest(event.clientX, event.clientY);
        if (index < 0) {
          hideCard();
          return;
        }
        shownAt = [event.clientX, event.clientY];
        const rootRect = dom.root.getBoundingClientRect();
        showCard(index, event.clientX - rootRect.left, event.clientY - rootRect.top);
      }, HOVER_MS);
    };
    dom.canvas.addEventListener("mouseleave", () => {
      clearTimeout(hoverTimer);
      hideCard();
    });
    state.hideCard = hideCard;
    dom.root.addEventListener(
      "mousedown",
      (event) => {
        if (state.tool === "pan" || event.button !== 0 || event.target !== dom.canvas) return;
        drag = { path: [[event.clientX, event.clientY]], moved: false };
        event.stopPropagation();
        event.preventDefault();
      },
      true,
    );
    // Capture phase on window, before regl-scatterplot's own listener: with a selection tool
    // its hover highlight is switched off (each change redraws every point).
    const onDrag = (event) => {
      if (!drag) return;
      const [x0, y0] = drag.path[0];
      const [lx, ly] = drag.path[drag.path.length - 1];
      if (!drag.moved && Math.abs(event.clientX - x0) + Math.abs(event.clientY - y0) < 4) return;
      drag.moved = true;
      const rect = dom.root.getBoundingClientRect();
      if (state.tool === "box") {
        drag.path[1] = [event.clientX, event.clientY];
        Object.assign(dom.box.style, {
          display: "block",
          left: `${Math.min(x0, event.clientX) - rect.left}px`,
          top: `${Math.min(y0, event.clientY) - rect.top}px`,
          width: `${Math.abs(event.clientX - x0)}px`,
          height: `${Math.abs(event.clientY - y0)}px`,
        });
      } else if (Math.hypot(event.clientX - lx, event.clientY - ly) >= 3) {
        drag.path.push([event.clientX, event.clientY]);
        dom.lasso.style.display = "block";
        dom.lassoLine.setAttribute(
          "points",
          drag.path.map(([px, py]) => `${px - rect.left},${py - rect.top}`).join(" "),
        );
      }
    };
    window.addEventListener(
      "mousemove",
      (event) => {
        if (press && event.buttons) {
          const far = Math.hypot(event.clientX - press.x, event.clientY - press.y);
          press.far = Math.max(press.far, far);
        }
        onDrag(event);
        onHover(event);
        if (state.tool !== "pan" && dom.root.isConnected) event.stopImmediatePropagation();
      },
      true,
    );
    window.addEventListener("mouseup", () => {
      window.shoalMapMouseUpAt = performance.now();
      if (!drag) return;
      const { path, moved } = drag;
      drag = null;
      dom.box.style.display = "none";
      dom.lasso.style.display = "none";
      if (!moved || !state.anchors) return;
      state.clickGuard = true; // the click that ends this drag is not a point click
      let polygon;
      let kind;
      if (state.tool === "box" && path.length === 2) {
        const [ax, ay] = toGl(...path[0]);
        const [bx, by] = toGl(...path[1]);
        polygon = [
          [ax, ay],
          [bx, ay],
          [bx, by],
          [ax, by],
        ];
        kind = "box";
      } else if (path.length >= 3) {
        polygon = path.map(([px, py]) => toGl(px, py));
        kind = "lasso";
      } else {
        return;
      }
      const rows = pointsInPolygons(state.x, state.y, [polygon]);
      const sent = sendSelection(kind, rows, polygon);
      Promise.resolve(sent).then(() => setTimeout(() => highlight(rows), 0));
    });
    const highlight = (rows) => {
      window.shoalMapSelected = rows.length;
      if (rows.length) plot.select(Array.from(rows), { preventEvent: true });
      else plot.deselect({ preventEvent: true });
    };
    const sendSelection = (kind, rows, polygon) => {
      const { rows: text, count } = rowsToBase64(rows);
      window.shoalMapSelectionSentAt = performance.now();
      return state.send("selection", {
        kind,
        count,
        rows: text,
        polygon: polygon ? polygon.map(([px, py]) => [Math.fround(px), Math.fround(py)]) : null,
        n: state.n,
      });
    };
    state.highlight = highlight;
    // A click that ends a drag (a box, or a lasso closed where it began) is not a point click.
    dom.root.addEventListener(
      "mousedown",
      (event) => {
        press = { x: event.clientX, y: event.clientY, far: 0 };
      },
      true,
    );
    dom.root.addEventListener(
      "click",
      (event) => {
        const dragged = state.clickGuard || (press && press.far > 4);
        state.clickGuard = false;
        press = null;
        if (dragged) event.stopPropagation();
      },
      true,
    );
  }

  const plot = state.plot;
  // A map to look at only (header.tools false, e.g. the Compare page): pan and zoom, no selection.
  state.viewOnly = header.tools === false;
  state.card = header.card || null;
  dom.tools.box.hidden = dom.tools.lasso.hidden = state.viewOnly;
  if (state.viewOnly && state.tool !== "pan") state.setTool("pan");
  const redraw = header.points_id !== state.pointsId;
  const finish = () => {
    state.n = header.n;
    dom.status.textContent = `${header.n.toLocaleString("en-US")} points`;
    dom.root.setAttribute("data-drawn", header.points_id);
    window.shoalMapDrawn = { id: header.points_id, n: header.n, ms: performance.now() - started };
    if (header.epoch !== state.epoch) {
      state.epoch = header.epoch;
      if (plot.get("selectedPoints").length) state.highlight([]);
    }
    const wanted = header.select || header.select_rows;
    const wantedText = wanted ? JSON.stringify(wanted) : null;
    if (wantedText && wantedText !== state.applied) {
      state.applied = wantedText;
      state.highlight(
        header.select ? pointsInPolygons(state.x, state.y, header.select) : header.select_rows,
      );
    }
  };
  if (!redraw) {
    finish();
    return undefined;
  }
  state.pointsId = header.points_id;
  state.applied = null;
  state.hideCard();
  renderLegend(header.legend, dom.legend);
  dom.status.textContent = `Drawing ${header.n.toLocaleString("en-US")} points…`;
  state.x = x;
  state.y = y;
  state.anchors = pickAnchors(x, y);
  plot.set({
    pointColor: header.palette,
    colorBy: "valueA",
    pointSize: header.point_size,
    opacityBy: "density",
  });
  plot
    .draw({ x, y, valueA: codes }, { zDataType: "categorical" })
    .then(finish)
    .catch((error) => {
      dom.status.textContent = `The map could not be drawn: ${error}`;
    });
  return undefined;
}

function pickAnchors(x, y) {
  // Two points far apart in both x and y (for mapping screen positions back to GL space).
  let minIndex = 0;
  let maxIndex = 0;
  for (let i = 1; i < x.length; i++) {
    if (x[i] + y[i] < x[minIndex] + y[minIndex]) minIndex = i;
    if (x[i] + y[i] > x[maxIndex] + y[maxIndex]) maxIndex = i;
  }
  if (x[minIndex] === x[maxIndex] || y[minIndex] === y[maxIndex]) return null;
  return [minIndex, maxIndex];
}

function pointsInPolygons(x, y, polygons) {
  // Indices of the points inside any of the polygons (even-odd rule), in index order.
  const inside = new Uint8Array(x.length);
  for (const polygon of polygons) {
    if (!polygon || polygon.length < 3) continue;
    const px = Float64Array.from(polygon, (v) => v[0]);
    const py = Float64Array.from(polygon, (v) => v[1]);
    let xMin = Infinity;
    let xMax = -Infinity;
    let yMin = Infinity;
    let yMax = -Infinity;
    for (let k = 0; k < px.length; k++) {
      xMin = Math.min(xMin, px[k]);
      xMax = Math.max(xMax, px[k]);
      yMin = Math.min(yMin, py[k]);
      yMax = Math.max(yMax, py[k]);
    }
    const count = px.length;
    for (let i = 0; i < x.length; i++) {
      const xi = x[i];
      const yi = y[i];
      if (xi < xMin || xi > xMax || yi < yMin || yi > yMax || inside[i]) continue;
      let odd = false;
      for (let a = 0, b = count - 1; a < count; b = a++) {
        if (py[a] > yi !== py[b] > yi) {
          const cross = px[a] + ((yi - py[a]) * (px[b] - px[a])) / (py[b] - py[a]);
          if (xi < cross) odd = !odd;
        }
      }
      if (odd) inside[i] = 1;
    }
  }
  let total = 0;
  for (let i = 0; i < inside.length; i++) total += inside[i];
  const rows = new Uint32Array(total);
  for (let i = 0, j = 0; i < inside.length; i++) if (inside[i]) rows[j++] = i;
  return rows;
}
