// Review's radiograph and heatmap overlay with window/level applied in the browser (dashboard/viewer.py).
//
// Python sends a study's values once (16-bit, zlib, base64) with its presets, and the heat layer as an
// RGBA PNG whose alpha is the engine's blend weight. Moving the window (sliders, the number fields, arrow
// keys, or a drag on either image: across for the width, down for the centre; double-click resets) only
// redraws the two canvases here: no rerun, no image request, nothing blanks. Each study keeps its own
// window while the page is open; a new study starts at its first preset.

const windows = new Map();          // study -> {c, w, inv}

function bytesOf(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function inflate(b64) {      // high bytes, then low bytes (dashboard.imaging.packed_values)
  const stream = new Blob([bytesOf(b64)]).stream().pipeThrough(new DecompressionStream("deflate"));
  const planes = new Uint8Array(await new Response(stream).arrayBuffer());
  const n = planes.length / 2, out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = (planes[i] << 8) | planes[n + i];
  return out;
}

function loadImage(uri) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the heat layer could not be decoded"));
    img.src = uri;
  });
}

function fmt(st, v) { return Number(v).toFixed(st.decimals); }

function draw(st, el) {
  if (!st.px) return;
  const { c, w, inv } = st.win;
  const scale = st.unitValue, low = c - w / 2, flip = st.mono1 !== inv;
  const lut = st.lut || (st.lut = new Uint8ClampedArray(65536));
  for (let q = 0; q < 65536; q++) {          // the window as a table over every stored value
    let g = (st.lo + q * scale - low) / w;
    g = g < 0 ? 0 : g > 1 ? 1 : g;
    lut[q] = Math.floor((flip ? 1 - g : g) * 255 + 0.5);   // to_gray_rgb's rounding
  }
  if (!st.image || st.image.width !== st.width || st.image.height !== st.height) {
    st.image = new ImageData(st.width, st.height);
  }
  const d = st.image.data, px = st.px;
  for (let i = 0, j = 0; i < px.length; i++, j += 4) {
    const g = lut[px[i]];
    d[j] = g; d[j + 1] = g; d[j + 2] = g; d[j + 3] = 255;
  }
  el.left.getContext("2d").putImageData(st.image, 0, 0);
  const ctx = el.right.getContext("2d");
  ctx.putImageData(st.image, 0, 0);
  if (st.heat) ctx.drawImage(st.heat, 0, 0, st.width, st.height);
  el.c.value = st.win.c; el.w.value = st.win.w;
  if (el.root.getRootNode().activeElement !== el.cn) el.cn.value = fmt(st, c);
  if (el.root.getRootNode().activeElement !== el.wn) el.wn.value = fmt(st, w);
  el.inv.checked = inv;
  el.cap.textContent = `${st.name} (WC ${fmt(st, c)} / WW ${fmt(st, w)}${inv ? ", inverted" : ""})`;
  el.root.dataset.window = `${fmt(st, c)}/${fmt(st, w)}${inv ? "/inverted" : ""}`;
}

function fitHeight(el, minVh) {
  // The panels take the rest of the screen below their top (captions under them), however much the
  // page above them holds (a name prompt, warnings): images and the decision above stay in one screen.
  const main = document.querySelector('[data-testid="stMain"]');
  const top = el.left.getBoundingClientRect().top + (main ? main.scrollTop : window.scrollY);
  const px = Math.max(window.innerHeight - top - 64, window.innerHeight * minVh / 100);
  el.root.style.setProperty("--viewer-height", `${Math.round(px)}px`);
}

function schedule(st, el) {
  if (st.frame) return;
  st.frame = requestAnimationFrame(() => { st.frame = 0; draw(st, el); });
}

function setWindow(st, el, c, w, inv = st.win.inv) {
  const r = (v) => Number(Number(v).toFixed(st.decimals));
  st.win = { c: r(Math.min(Math.max(c, st.lo - st.span), st.hi + st.span)),
             w: r(Math.min(Math.max(w, st.step), 2 * st.span)), inv };
  windows.set(st.study, st.win);
  schedule(st, el);
}

function wire(st, el) {
  el.c.addEventListener("input", () => setWindow(st, el, +el.c.value, st.win.w));
  el.w.addEventListener("input", () => setWindow(st, el, st.win.c, +el.w.value));
  for (const [box, which] of [[el.cn, "c"], [el.wn, "w"]]) {
    box.addEventListener("change", () => {
      const v = parseFloat(box.value);
      if (Number.isFinite(v)) setWindow(st, el, which === "c" ? v : st.win.c, which === "w" ? v : st.win.w);
      else schedule(st, el);
    });
  }
  el.inv.addEventListener("change", () => setWindow(st, el, st.win.c, st.win.w, el.inv.checked));
  el.preset.addEventListener("change", () => {
    const [, c, w] = st.presets[+el.preset.value];
    setWindow(st, el, c, w, st.win.inv);
  });
  const reset = () => {
    const [, c, w] = st.presets[0];
    el.preset.value = "0";
    setWindow(st, el, c, w, false);
  };
  el.reset.addEventListener("click", reset);
  for (const canvas of [el.left, el.right]) {
    canvas.addEventListener("dblclick", reset);
    canvas.addEventListener("pointerdown", (e) => {
      canvas.setPointerCapture(e.pointerId);
      const box = canvas.getBoundingClientRect();
      st.drag = { x: e.clientX, y: e.clientY, c: st.win.c, w: st.win.w, sx: st.span / box.width,
                  sy: st.span / box.height };
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!st.drag) return;
      const g = st.drag;
      setWindow(st, el, g.c + (e.clientY - g.y) * g.sy, g.w + (e.clientX - g.x) * g.sx);
    });
    const end = () => { st.drag = null; };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  }
}

export default function ({ parentElement, data }) {
  const root = parentElement.querySelector(".cxr-viewer");
  const q = (s) => root.querySelector(s);
  const el = { root, c: q(".wc"), w: q(".ww"), cn: q(".wc-n"), wn: q(".ww-n"), inv: q(".inv"),
               preset: q(".preset"), reset: q(".reset"), left: q(".left"), right: q(".right"),
               cap: q(".cap-left"), capRight: q(".cap-right"), scale: q(".scale"), unit: q(".unit") };
  const st = root.__state || (root.__state = { token: 0 });
  if (!root.__wired) { wire(st, el); root.__wired = true; }
  const token = ++st.token;
  fitHeight(el, data.min_height_vh);
  if (!root.__resize) {
    root.__resize = () => fitHeight(el, st.minVh);
    window.addEventListener("resize", root.__resize);
  }
  st.minVh = data.min_height_vh;
  el.capRight.textContent = data.overlay_caption;
  el.unit.textContent = data.unit;
  el.preset.title = el.c.title = el.w.title = `Window ${data.unit}; drag on an image: across for the width, down for the centre`;
  el.scale.src = data.scale_uri || "";
  el.scale.hidden = !data.scale_uri;

  (async () => {
    const fresh = data.pixels !== st.pixels;
    const px = fresh ? await inflate(data.pixels) : st.px;
    const heat = data.overlay === st.overlay ? st.heat : (data.overlay ? await loadImage(data.overlay) : null);
    if (token !== st.token) return;                  // a newer render arrived while this one decoded
    Object.assign(st, { px, heat, pixels: data.pixels, overlay: data.overlay, width: data.width,
                        height: data.height, lo: data.lo, unitValue: data.unit_value, hi: data.hi, span: Math.max(data.hi - data.lo, 1e-9),
                        step: data.step, decimals: data.decimals, mono1: data.monochrome1,
                        presets: data.presets, name: data.name, study: data.study });
    if (fresh) {
      for (const canvas of [el.left, el.right]) {
        if (canvas.width !== data.width || canvas.height !== data.height) {
          canvas.width = data.width; canvas.height = data.height;
        }
      }
      for (const r of [el.c, el.w]) r.step = String(data.step);
      el.c.min = String(data.lo - st.span); el.c.max = String(data.hi + st.span);
      el.w.min = String(data.step); el.w.max = String(2 * st.span);
      el.preset.replaceChildren(...data.presets.map(([label], i) => new Option(label, String(i))));
    }
    const [, c0, w0] = data.presets[0];
    st.win = windows.get(data.study) || { c: c0, w: w0, inv: false };
    windows.set(data.study, st.win);
    draw(st, el);
    root.dataset.ready = data.study;
  })().catch((err) => {
    root.dataset.error = String(err);
    el.cap.textContent = `The image could not be drawn in this browser: ${err}`;
  });
}
