/*
 * Cascade dashboard: polls the admin API (relative URLs, so it works on
 * whichever listener serves it) and draws totals, SVG charts and tables.
 * The admin token comes from the URL fragment (#token=...) or the token form,
 * is kept in sessionStorage and is sent only to this gateway's /admin/* API.
 */
'use strict';
(function () {
  const REFRESH_MS = 5000;
  const FETCH_TIMEOUT_MS = 10000;
  const TOKEN_KEY = 'cascade.dashboard.token';
  const WINDOW_KEY = 'cascade.dashboard.window';
  const WINDOWS = [['15m', '15 min'], ['1h', '1 h'], ['6h', '6 h'], ['24h', '24 h'], ['168h', '7 d']];
  const MINUTE = 60000;
  const HOUR = 3600000;
  // The SVG namespace, taken from the parser rather than spelled out.
  const SVGNS = (function () {
    const d = document.createElement('div');
    d.innerHTML = '<svg></svg>';
    return d.firstChild.namespaceURI;
  })();

  const state = {
    token: '',
    window: '1h',
    stats: null,
    backends: null,
    statsErr: null,
    backendsErr: null,
    updated: null, // Date of the last successful stats answer
    timer: 0,
    seq: 0,
    loading: false,
  };

  // ---------- small helpers ----------
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = text;
    return n;
  }

  function S(tag, attrs, parent) {
    const n = document.createElementNS(SVGNS, tag);
    for (const k in attrs) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }

  function num(v) {
    return typeof v === 'number' && isFinite(v) ? v : null;
  }

  function store(key, value) {
    try {
      if (value === null) sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, value);
    } catch (e) { /* storage disabled: keep it in memory only */ }
  }

  function load(key) {
    try { return sessionStorage.getItem(key) || ''; } catch (e) { return ''; }
  }

  // ---------- number formatting (units always shown) ----------
  const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

  function sig(v, digits) {
    // Significant digits without exponent notation or trailing zeros.
    if (v === 0) return '0';
    const s = Number(v.toPrecision(digits));
    if (Math.abs(s) >= 1000) return intFmt.format(s);
    return String(s);
  }

  function fmtInt(v) {
    v = num(v);
    return v === null ? '–' : intFmt.format(Math.round(v));
  }

  function fmtCompact(v) {
    v = num(v);
    if (v === null) return '–';
    const a = Math.abs(v);
    if (a >= 1e9) return sig(v / 1e9, 3) + 'G';
    if (a >= 1e6) return sig(v / 1e6, 3) + 'M';
    if (a >= 1e4) return sig(v / 1e3, 3) + 'k';
    if (a >= 1000) return intFmt.format(Math.round(v));
    return sig(v, 3);
  }

  function fmtPct(v, digits) {
    v = num(v);
    if (v === null) return '–';
    return (v * 100).toFixed(digits === undefined ? 1 : digits) + '%';
  }

  function fmtUSD(v) {
    v = num(v);
    if (v === null) return '–';
    const a = Math.abs(v);
    const sign = v < 0 ? '−' : '';
    if (a === 0) return '$0.00';
    if (a >= 1000) return sign + '$' + intFmt.format(Math.round(a));
    if (a >= 1) return sign + '$' + a.toFixed(2);
    return sign + '$' + sig(a, 3);
  }

  function fmtWh(v) {
    v = num(v);
    if (v === null) return '–';
    const a = Math.abs(v);
    if (a === 0) return '0 Wh';
    if (a >= 1e6) return sig(v / 1e6, 3) + ' MWh';
    if (a >= 1000) return sig(v / 1000, 3) + ' kWh';
    if (a >= 1) return sig(v, 3) + ' Wh';
    return sig(v * 1000, 3) + ' mWh';
  }

  function fmtMs(v) {
    v = num(v);
    if (v === null) return '–';
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 1 : 2) + ' s';
    if (v >= 10) return Math.round(v) + ' ms';
    return v.toFixed(1) + ' ms';
  }

  // Axis labels: as many decimals as the step needs, so a column reads evenly.
  function tickDigits(step) {
    return step > 0 && step < 1 ? Math.min(6, Math.ceil(-Math.log10(step) - 1e-9)) : 0;
  }

  function tickUSD(step) {
    return (v) => {
      if (v === 0) return '$0';
      const a = Math.abs(v);
      const sign = v < 0 ? '−' : '';
      if (a >= 1000) return sign + '$' + fmtCompact(a);
      return sign + '$' + a.toFixed(Math.max(2, tickDigits(step)));
    };
  }

  function tickWh(step) {
    return (v) => {
      if (v === 0) return '0';
      if (step >= 1000) return sig(v / 1000, 4) + ' kWh';
      if (step >= 1) return sig(v, 4) + ' Wh';
      return sig(v * 1000, 4) + ' mWh';
    };
  }

  function tickMs(step) {
    return (v) => {
      if (v === 0) return '0';
      if (step >= 100) return sig(v / 1000, 4) + ' s';
      return sig(v, 4) + ' ms';
    };
  }

  function tickCount(step) {
    return (v) => {
      const a = Math.abs(v);
      if (a >= 1e6) return sig(v / 1e6, 4) + 'M';
      if (a >= 1000 && step >= 100) return sig(v / 1000, 4) + 'k';
      return sig(v, 4);
    };
  }

  function tickPct(step) {
    return (v) => (v * 100).toFixed(Math.max(0, tickDigits(step * 100))) + '%';
  }

  function fmtTokensPerWh(v) {
    v = num(v);
    return v === null ? '–' : fmtCompact(v) + ' tok/Wh';
  }

  function pad(n) { return n < 10 ? '0' + n : String(n); }

  function fmtClock(d, withSeconds) {
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + (withSeconds ? ':' + pad(d.getSeconds()) : '');
  }

  function fmtDay(d) { return pad(d.getMonth() + 1) + '-' + pad(d.getDate()); }

  function fmtAge(iso) {
    const t = Date.parse(iso);
    if (!isFinite(t) || t <= 0) return '–';
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 90) return s + ' s ago';
    if (s < 5400) return Math.round(s / 60) + ' min ago';
    return Math.round(s / 3600) + ' h ago';
  }

  // ---------- token and window ----------
  function readFragment() {
    const h = location.hash.replace(/^#/, '');
    if (!h) return;
    const keep = [];
    let changed = false;
    for (const part of h.split('&')) {
      const i = part.indexOf('=');
      const k = i < 0 ? part : part.slice(0, i);
      let v = i < 0 ? '' : part.slice(i + 1);
      try { v = decodeURIComponent(v); } catch (e) { /* keep it raw */ }
      if (k === 'token') {
        setToken(v);
        changed = true;
      } else if (k === 'window' && WINDOWS.some((w) => w[0] === v)) {
        state.window = v;
        store(WINDOW_KEY, v);
        keep.push(part);
      } else if (part) {
        keep.push(part);
      }
    }
    if (changed) {
      // Do not leave the token in the address bar or the history.
      history.replaceState(null, '', location.pathname + location.search + (keep.length ? '#' + keep.join('&') : ''));
    }
  }

  function setToken(t) {
    state.token = (t || '').trim();
    store(TOKEN_KEY, state.token ? state.token : null);
  }

  function showTokenForm(show) {
    $('token-form').hidden = !show;
    if (show) $('token-input').focus();
  }

  // ---------- admin API ----------
  function apiBase() {
    // "/dashboard" -> "/", "/ops/dashboard/" -> "/ops/": the admin API sits
    // beside the page on the same listener.
    const p = location.pathname.replace(/dashboard\/?$/, '');
    return p.slice(0, p.lastIndexOf('/') + 1);
  }

  async function getJSON(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const r = await fetch(apiBase() + path, {
        headers: { 'Authorization': 'Bearer ' + state.token, 'Accept': 'application/json' },
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
        referrerPolicy: 'no-referrer',
        signal: ctl.signal,
      });
      const body = await r.text();
      let j = null;
      try { j = JSON.parse(body); } catch (e) { /* reported below */ }
      if (!r.ok) {
        const msg = (j && j.error && j.error.message) || body.trim().slice(0, 300) || r.statusText || 'request failed';
        const err = new Error(msg);
        err.status = r.status;
        throw err;
      }
      if (j === null || typeof j !== 'object') {
        const err = new Error('the answer was not JSON');
        err.status = r.status;
        throw err;
      }
      return j;
    } catch (e) {
      if (e && e.name === 'AbortError') {
        const err = new Error('no answer within ' + FETCH_TIMEOUT_MS / 1000 + ' s');
        err.status = 0;
        throw err;
      }
      if (e && e.status === undefined) e.status = 0;
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  async function refresh() {
    clearTimeout(state.timer);
    const my = ++state.seq;
    if (!state.token) {
      state.stats = null;
      state.backends = null;
      state.statsErr = null;
      state.backendsErr = null;
      showTokenForm(true);
      render();
      return;
    }
    state.loading = true;
    document.body.dataset.loading = 'true';
    const [s, b] = await Promise.allSettled([
      getJSON('admin/stats?window=' + encodeURIComponent(state.window) + '&by=tier'),
      getJSON('admin/backends'),
    ]);
    if (my !== state.seq) return; // a newer refresh is under way
    state.loading = false;
    if (s.status === 'fulfilled') {
      state.stats = s.value;
      state.statsErr = null;
      state.updated = new Date();
    } else {
      state.statsErr = s.reason;
      // Keep the last figures on a network hiccup; drop them when the API said no.
      if (s.reason.status !== 0) state.stats = null;
    }
    if (b.status === 'fulfilled') {
      state.backends = b.value;
      state.backendsErr = null;
    } else {
      state.backendsErr = b.reason;
      if (b.reason.status !== 0) state.backends = null;
    }
    const denied = [state.statsErr, state.backendsErr].some((e) => e && (e.status === 401 || e.status === 403));
    if (denied) showTokenForm(true);
    render();
    document.body.dataset.loading = 'false';
    document.body.dataset.rendered = String(my);
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    if (document.hidden || !state.token) return;
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  // ---------- status and banner ----------
  function describe(what, err) {
    const s = err.status;
    if (s === 401 || s === 403) {
      // A gateway without a configured admin token refuses everyone: no token typed here helps.
      const off = /disabled/i.test(err.message);
      return 'The admin API refused the token (HTTP ' + s + '): ' + err.message.replace(/\.?$/, '.') +
        (off ? '' : ' Enter a valid token.');
    }
    if (s === 0) return 'Cannot reach ' + what + ': ' + err.message + (state.updated ? '. Showing figures from ' + fmtClock(state.updated, true) + '.' : '.');
    if (s === 404) return what + ' is not served here (HTTP 404): ' + err.message;
    if (what === 'statistics' && (s === 503 || /redis/i.test(err.message))) {
      const hint = /redis\.url/i.test(err.message) ? '' : ' Request records live in Redis: check redis.url in the config and that Redis is reachable from the gateway.';
      return 'Statistics unavailable (HTTP ' + s + '): ' + err.message.replace(/\.?$/, '.') + hint +
        (state.backends ? ' Backend health below is live.' : '');
    }
    return what + ' failed (HTTP ' + s + '): ' + err.message;
  }

  function renderStatus() {
    const banner = $('banner');
    const msgs = [];
    let level = 'info';
    if (!state.token) {
      msgs.push('Enter the admin token to load figures, or open this page as /dashboard#token=YOUR_TOKEN.');
    }
    const errs = [];
    if (state.statsErr) errs.push(['statistics', state.statsErr]);
    if (state.backendsErr && !(state.statsErr && state.statsErr.status === state.backendsErr.status &&
        (state.statsErr.status === 401 || state.statsErr.status === 403 || state.statsErr.status === 0))) {
      errs.push(['backend status', state.backendsErr]);
    }
    for (const [what, err] of errs) {
      msgs.push(describe(what, err));
      level = err.status === 0 || (state.stats && !state.statsErr) ? 'warn' : 'bad';
    }
    const st = state.stats;
    if (!errs.length && st && st.total && (num(st.total.requests) || 0) === 0) {
      msgs.push('No requests recorded in the last ' + windowLabel() + '. Send traffic through the gateway and the figures appear within seconds.');
      level = 'info';
    }
    banner.hidden = msgs.length === 0;
    banner.className = 'banner ' + level;
    banner.dataset.state = errs.length ? 'error' : (msgs.length ? 'info' : 'ok');
    banner.textContent = '';
    msgs.forEach((m, i) => {
      if (i) banner.appendChild(el('br'));
      banner.appendChild(document.createTextNode(m));
    });

    const dot = $('status-dot');
    dot.className = 'dot ' + (!state.token ? '' : errs.length === 0 ? 'ok' : (state.stats || state.backends) ? 'warn' : 'bad');
    const lu = $('last-updated');
    if (state.updated) {
      lu.textContent = 'Updated ' + fmtClock(state.updated, true) + ' · every ' + REFRESH_MS / 1000 + ' s';
      lu.dataset.time = state.updated.toISOString();
    } else {
      lu.textContent = state.token ? 'No figures loaded' : 'Waiting for token';
      lu.dataset.time = '';
    }
  }

  function windowLabel() {
    const w = WINDOWS.find((x) => x[0] === state.window);
    return w ? w[1] : state.window;
  }

  // ---------- totals ----------
  function setKPI(id, raw, text, sub, mood) {
    const box = $(id);
    box.dataset.value = raw === null || raw === undefined ? '' : String(raw);
    // The unit after the number is set smaller so large figures fit a card.
    const v = box.querySelector('.kpi-value');
    v.textContent = '';
    const m = /^(.*\d)(\s+)([^\d\s]+)$/.exec(text);
    if (m) {
      v.appendChild(document.createTextNode(m[1] + m[2]));
      v.appendChild(el('span', 'kpi-unit', m[3]));
    } else {
      v.textContent = text;
    }
    v.title = text;
    box.querySelector('.kpi-sub').textContent = sub || '';
    box.querySelector('.kpi-sub').title = sub || '';
    box.classList.toggle('good', mood === 'good');
    box.classList.toggle('over', mood === 'over');
  }

  function renderKPIs() {
    const st = state.stats;
    const t = st && st.total;
    if (!t) {
      for (const id of ['kpi-requests', 'kpi-escalation-rate', 'kpi-cost', 'kpi-savings', 'kpi-energy', 'kpi-tokens-per-wh']) {
        setKPI(id, null, '–', '', '');
      }
      return;
    }
    const routing = st.routing || {};
    const target = num(routing.target_escalation_rate);
    const req = num(t.requests) || 0;
    let moved = '';
    if (num(t.fallbacks_up) || num(t.degraded_down)) {
      moved = fmtInt(t.fallbacks_up || 0) + ' fallback up · ' + fmtInt(t.degraded_down || 0) + ' degraded · ';
    }
    setKPI('kpi-requests', t.requests, fmtInt(t.requests),
      fmtInt(t.errors) + ' errors · ' + moved + fmtRate(req, st) + ' · last ' + windowLabel());
    const rate = num(t.escalation_rate);
    let escSub = fmtInt(t.escalations) + ' escalated · ';
    escSub += target !== null ? 'target ' + fmtPct(target) : 'fixed threshold ' + (num(routing.threshold) === null ? '–' : routing.threshold);
    if (num(t.cascaded)) {
      escSub += ' · ' + fmtInt(t.cascaded) + ' answers judged, ' + fmtInt(t.escalations_confidence || 0) +
        ' escalated on confidence, ' + fmtUSD(t.wasted_usd || 0) + ' of cheap answers discarded';
    }
    const over = target !== null && rate !== null && req >= 20 && rate > target * 1.2 + 0.01;
    setKPI('kpi-escalation-rate', t.escalation_rate, fmtPct(rate), escSub, over ? 'over' : '');
    setKPI('kpi-cost', t.cost_usd, fmtUSD(t.cost_usd),
      'all-large ' + fmtUSD(t.baseline_cost_usd) + (req ? ' · ' + fmtUSD((num(t.cost_usd) || 0) / req) + '/req' : ''));
    const sav = num(t.savings_usd);
    setKPI('kpi-savings', t.savings_usd, fmtUSD(sav), fmtPct(t.savings_rate) + ' cheaper than all-large',
      sav !== null && sav > 0 ? 'good' : '');
    setKPI('kpi-energy', t.energy_wh, fmtWh(t.energy_wh),
      fmtCompact((num(t.input_tokens) || 0) + (num(t.output_tokens) || 0)) + ' tokens in+out');
    setKPI('kpi-tokens-per-wh', t.tokens_per_wh, fmtTokensPerWh(t.tokens_per_wh),
      fmtCompact(t.output_tokens) + ' output tokens');
  }

  function fmtRate(req, st) {
    const from = Date.parse(st.from), to = Date.parse(st.to);
    if (!isFinite(from) || !isFinite(to) || to <= from) return '';
    const perMin = req / ((to - from) / MINUTE);
    return (perMin >= 10 ? fmtCompact(perMin) : sig(perMin, 2)) + '/min';
  }

  // ---------- scales ----------
  function niceStep(raw) {
    if (!(raw > 0) || !isFinite(raw)) return 1;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    const m = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return m * mag;
  }

  // The next nice step above step.
  function nextNice(step) {
    return niceStep(step * 1.01);
  }

  // Scale over [min,max] with n intervals whose ends are multiples of a nice step.
  function fitScale(min, max, n) {
    if (!(max > min)) { max = min + 1; }
    let step = niceStep((max - min) / n);
    for (let i = 0; i < 40; i++) {
      const lo = Math.floor(min / step + 1e-9) * step;
      if (lo + step * n >= max - 1e-12) return { lo: lo, hi: lo + step * n, step: step, n: n };
      step = nextNice(step);
    }
    return { lo: min, hi: max, step: (max - min) / n, n: n };
  }

  // Left scale: its own interval count (at most 4), from zero.
  function leftScale(min, max) {
    if (!(max > 0) && !(min < 0)) max = 1;
    const step = niceStep((max - min) / 4);
    const lo = Math.floor(min / step + 1e-9) * step;
    const n = Math.max(1, Math.ceil((max - lo) / step - 1e-9));
    return { lo: lo, hi: lo + n * step, step: step, n: n };
  }

  // Scale from zero to max with at most n intervals.
  function axisScale(max, n) {
    if (!(max > 0)) max = 1;
    const step = niceStep(max / n);
    const k = Math.max(1, Math.ceil(max / step - 1e-9));
    return { lo: 0, hi: k * step, step: step, n: k };
  }

  function timeStep(span, width) {
    const steps = [MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR,
      6 * HOUR, 12 * HOUR, 24 * HOUR, 48 * HOUR, 7 * 24 * HOUR];
    const maxTicks = Math.max(2, Math.floor(width / 78));
    for (const s of steps) if (span / s <= maxTicks) return s;
    return steps[steps.length - 1];
  }

  // ---------- time chart ----------
  // cfg: {label, from, to, bucket, points, left:{fmt, series}, right:{fmt, series, cap}, refs, tooltip}
  // series: {key, type:'bar'|'line'|'area', value(p) -> number|null, width (bars, 0..1), connect (lines)}
  function timeChart(box, cfg) {
    box.textContent = '';
    const W = Math.max(240, box.clientWidth);
    const H = Math.max(120, box.clientHeight);
    const m = { l: 56, r: cfg.right ? 60 : 14, t: 12, b: 22 };
    const iw = W - m.l - m.r;
    const ih = H - m.t - m.b;
    const svg = S('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': cfg.label });
    box.appendChild(svg);
    const bucket = cfg.bucket;
    const x0 = Math.floor(cfg.from / bucket) * bucket;
    const x1 = Math.max(x0 + bucket, Math.ceil(cfg.to / bucket) * bucket);
    const span = x1 - x0;
    const X = (t) => m.l + (t - x0) / span * iw;
    const pts = cfg.points.filter((p) => p.t + bucket > x0 && p.t < x1);

    function extent(side) {
      let lo = 0, hi = 0;
      for (const s of side.series) {
        for (const p of pts) {
          const v = s.value(p);
          if (v === null || !isFinite(v)) continue;
          if (v > hi) hi = v;
          if (v < lo) lo = v;
        }
      }
      for (const r of cfg.refs || []) {
        if ((r.axis === 'right') === (side === cfg.right) && r.value !== null) {
          if (r.value > hi) hi = r.value;
          if (r.value < lo) lo = r.value;
        }
      }
      return [lo, hi];
    }

    const [lmin, lmax] = extent(cfg.left);
    const L = leftScale(lmin, lmax * 1.05);
    const YL = (v) => m.t + ih - (v - L.lo) / (L.hi - L.lo) * ih;
    let R = null, YR = null;
    if (cfg.right) {
      const [rmin, rmax] = extent(cfg.right);
      R = fitScale(rmin, rmax > rmin ? rmax * 1.05 : rmin + (cfg.right.minSpan || 1), L.n);
      if (cfg.right.cap !== undefined && R.hi > cfg.right.cap && rmax <= cfg.right.cap && R.lo >= 0) {
        R = { lo: 0, hi: cfg.right.cap, step: cfg.right.cap / L.n, n: L.n };
      }
      YR = (v) => m.t + ih - (v - R.lo) / (R.hi - R.lo) * ih;
    }

    // grid and value axes
    const axes = S('g', {}, svg);
    for (let i = 0; i <= L.n; i++) {
      const v = L.lo + i * L.step;
      const y = Math.round(YL(v)) + 0.5;
      S('line', { x1: m.l, x2: m.l + iw, y1: y, y2: y, class: i === 0 && L.lo === 0 ? 'axis-line' : 'grid-line' }, axes);
      S('text', { x: m.l - 6, y: y + 4, 'text-anchor': 'end' }, axes).textContent = tick(cfg.left, L.step)(v);
      if (R) {
        S('text', { x: m.l + iw + 6, y: y + 4, 'text-anchor': 'start' }, axes).textContent = tick(cfg.right, R.step)(R.lo + i * R.step);
      }
    }
    // time axis
    const ts = timeStep(span, iw);
    const tz = new Date(x0).getTimezoneOffset() * MINUTE;
    const long = span > 36 * HOUR;
    for (let t = Math.ceil((x0 - tz) / ts) * ts + tz; t <= x1; t += ts) {
      const x = X(t);
      if (x < m.l - 0.5 || x > m.l + iw + 0.5) continue;
      const d = new Date(t);
      const label = long ? (d.getHours() === 0 && d.getMinutes() === 0 ? fmtDay(d) : fmtDay(d) + ' ' + fmtClock(d)) : fmtClock(d);
      S('line', { x1: x, x2: x, y1: m.t + ih, y2: m.t + ih + 4, class: 'axis-line' }, axes);
      S('text', { x: Math.min(Math.max(x, m.l + 14), m.l + iw - 14), y: H - 6, 'text-anchor': 'middle' }, axes).textContent = label;
    }

    const slot = Math.max(1, iw * bucket / span);
    const marks = S('g', {}, svg);
    function drawSide(side, Y, lo) {
      const zero = Y(Math.max(lo, 0));
      for (const s of side.series) {
        if (s.type === 'bar') {
          const w = Math.max(1, slot * (s.width || 0.85) - (slot > 4 ? 1 : 0));
          for (const p of pts) {
            const v = s.value(p);
            if (v === null || !(v > 0)) continue;
            const y = Y(v);
            S('rect', { x: X(p.t) + (slot - w) / 2, y: y, width: w, height: Math.max(0.5, zero - y), class: 'bar ' + s.key }, marks);
          }
        } else {
          const path = [];
          const area = [];
          let prev = null;
          let run = [];
          const flush = () => {
            if (run.length === 1) {
              S('circle', { cx: run[0][0], cy: run[0][1], r: 2.5, class: 'point ' + s.key }, marks);
            }
            if (run.length > 1 && s.type === 'area') {
              area.push('M' + run[0][0] + ' ' + zero + 'L' + run.map((q) => q[0] + ' ' + q[1]).join('L') + 'L' + run[run.length - 1][0] + ' ' + zero + 'Z');
            }
            if (run.length > 1) path.push('M' + run.map((q) => q[0].toFixed(1) + ' ' + q[1].toFixed(1)).join('L'));
            run = [];
          };
          for (const p of pts) {
            const v = s.value(p);
            if (v === null || !isFinite(v)) { if (!s.connect) { flush(); prev = null; } continue; }
            if (prev !== null && !s.connect && p.t - prev > bucket) flush();
            run.push([X(p.t + bucket / 2), Y(v)]);
            prev = p.t;
          }
          flush();
          if (area.length) S('path', { d: area.join(''), class: 'area ' + s.key }, marks);
          if (path.length) S('path', { d: path.join(''), class: 'line ' + s.key }, marks);
        }
      }
    }
    drawSide(cfg.left, YL, L.lo);
    if (R) drawSide(cfg.right, YR, R.lo);

    for (const r of cfg.refs || []) {
      if (r.value === null) continue;
      const Y = r.axis === 'right' ? YR : YL;
      if (!Y) continue;
      const y = Y(r.value);
      S('line', { x1: m.l, x2: m.l + iw, y1: y, y2: y, class: 'ref ' + r.key }, marks);
      S('text', { x: m.l + iw - 4, y: y - 5, 'text-anchor': 'end', class: 'ref-label ' + r.key }, marks).textContent = r.label;
    }

    if (!pts.length) {
      box.appendChild(el('div', 'empty', cfg.empty || 'No data in this window'));
      return;
    }

    // hover: a guide line and a tooltip for the bucket under the pointer
    const guide = S('line', { x1: 0, x2: 0, y1: m.t, y2: m.t + ih, class: 'hover-line', visibility: 'hidden' }, svg);
    const hit = S('rect', { x: m.l, y: m.t, width: iw, height: ih, fill: 'transparent' }, svg);
    const tip = $('tooltip');
    hit.addEventListener('mousemove', (ev) => {
      const rect = svg.getBoundingClientRect();
      const t = x0 + (ev.clientX - rect.left - m.l) / iw * span;
      const p = pts.find((q) => t >= q.t && t < q.t + bucket);
      if (!p) { guide.setAttribute('visibility', 'hidden'); tip.hidden = true; return; }
      const gx = X(p.t + bucket / 2);
      guide.setAttribute('x1', gx);
      guide.setAttribute('x2', gx);
      guide.setAttribute('visibility', 'visible');
      showTip(ev, new Date(p.t), cfg.tooltip(p));
    });
    hit.addEventListener('mouseleave', () => { guide.setAttribute('visibility', 'hidden'); tip.hidden = true; });
  }

  // An axis formats its labels with tick(step) when it has one, else fmt.
  function tick(side, step) {
    return side.tick ? side.tick(step) : side.fmt;
  }

  function showTip(ev, when, rows) {
    const tip = $('tooltip');
    tip.textContent = '';
    tip.appendChild(el('div', 'tt-time', fmtDay(when) + ' ' + fmtClock(when)));
    for (const [key, label, value] of rows) {
      const row = el('div', 'tt-row');
      const name = el('span');
      if (key) name.appendChild(el('i', key));
      name.appendChild(document.createTextNode(label));
      row.appendChild(name);
      row.appendChild(el('b', '', value));
      tip.appendChild(row);
    }
    tip.hidden = false;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + w > window.innerWidth - 8) x = ev.clientX - w - 14;
    if (y + h > window.innerHeight - 8) y = ev.clientY - h - 14;
    tip.style.left = x + 'px';
    tip.style.top = y + 'px';
  }

  function legend(id, items) {
    const box = $(id);
    box.textContent = '';
    for (const [key, label, value, dash] of items) {
      const s = el('span');
      if (key !== null) s.appendChild(el('i', (dash ? 'dash ' : (key === 'k-req' || key === 'k-escn' || key === 'k-base' || key === 'k-cost' || key === 'k-energy' || key.startsWith('k-p')) ? 'box ' : '') + key));
      s.appendChild(document.createTextNode(label));
      if (value !== undefined && value !== '') {
        s.appendChild(document.createTextNode(' '));
        s.appendChild(el('b', '', value));
      }
      box.appendChild(s);
    }
  }

  // ---------- charts from stats ----------
  function seriesPoints(st) {
    const out = [];
    for (const p of st.series || []) {
      const t = Date.parse(p.t);
      if (!isFinite(t)) continue;
      out.push({
        t: t,
        requests: num(p.requests) || 0,
        escalations: num(p.escalations) || 0,
        errors: num(p.errors) || 0,
        cost: num(p.cost_usd) || 0,
        baseline: num(p.baseline_cost_usd) || 0,
        energy: num(p.energy_wh) || 0,
        out: num(p.output_tokens) || 0,
      });
    }
    out.sort((a, b) => a.t - b.t);
    let cum = 0;
    for (const p of out) {
      cum += p.baseline - p.cost;
      p.cumSavings = cum;
    }
    return out;
  }

  function renderCharts() {
    const st = state.stats;
    const ids = ['chart-requests', 'chart-cost', 'chart-energy', 'chart-latency'];
    if (!st) {
      const why = state.statsErr ? 'Statistics unavailable' : (state.token ? 'Loading…' : 'Waiting for the admin token');
      for (const id of ids) {
        const box = $(id);
        box.textContent = '';
        box.appendChild(el('div', 'empty', why));
      }
      for (const id of ['legend-requests', 'legend-cost', 'legend-energy', 'legend-latency']) $(id).textContent = '';
      return;
    }
    const from = Date.parse(st.from), to = Date.parse(st.to);
    const span = isFinite(from) && isFinite(to) && to > from ? to - from : HOUR;
    const bucket = span <= 6 * HOUR + MINUTE ? MINUTE : HOUR;
    const per = bucket === MINUTE ? 'minute' : 'hour';
    const pts = seriesPoints(st);
    const t0 = isFinite(from) ? from : Date.now() - span;
    const t1 = isFinite(to) ? to : Date.now();
    const routing = st.routing || {};
    const target = num(routing.target_escalation_rate);
    const total = st.total || {};
    const empty = 'No requests in the last ' + windowLabel();

    // requests and escalation rate
    const rate = (p) => (p.requests > 0 ? p.escalations / p.requests : null);
    const refs = [];
    if (target !== null) refs.push({ axis: 'right', value: target, key: 'k-target', label: 'target ' + fmtPct(target, 0) });
    else if (num(total.escalation_rate) !== null && (num(total.requests) || 0) > 0) {
      refs.push({ axis: 'right', value: total.escalation_rate, key: 'k-target', label: 'window average ' + fmtPct(total.escalation_rate) });
    }
    legend('legend-requests', [
      ['k-req', 'Requests/' + per],
      ['k-escn', 'Escalated'],
      ['k-esc', 'Escalation rate', fmtPct(total.escalation_rate)],
      target !== null ? ['k-target', 'Target', fmtPct(target), true]
        : ['k-target', 'Fixed threshold ' + (num(routing.threshold) === null ? '–' : routing.threshold) + ' · window average', '', true],
    ]);
    timeChart($('chart-requests'), {
      label: 'Requests and escalation rate per ' + per,
      from: t0, to: t1, bucket: bucket, points: pts, empty: empty,
      left: { tick: tickCount, series: [
        { key: 'k-req', type: 'bar', width: 0.85, value: (p) => p.requests },
        { key: 'k-escn', type: 'bar', width: 0.85, value: (p) => p.escalations },
      ] },
      right: { tick: tickPct, cap: 1, minSpan: 0.5, series: [
        { key: 'k-esc', type: 'line', value: rate },
      ] },
      refs: refs,
      tooltip: (p) => [
        ['k-req', 'Requests', fmtInt(p.requests)],
        ['k-escn', 'Escalated', fmtInt(p.escalations)],
        ['k-esc', 'Escalation rate', fmtPct(rate(p))],
        ['', 'Errors', fmtInt(p.errors)],
      ],
    });

    // cost and savings
    $('cost-title').textContent = 'Cost per ' + per + ' & cumulative savings';
    legend('legend-cost', [
      ['k-cost', 'Cost/' + per],
      ['k-base', 'All-large baseline/' + per],
      ['k-sav', 'Cumulative savings', fmtUSD(pts.length ? pts[pts.length - 1].cumSavings : total.savings_usd)],
    ]);
    timeChart($('chart-cost'), {
      label: 'Cost per ' + per + ' and cumulative savings',
      from: t0, to: t1, bucket: bucket, points: pts, empty: empty,
      left: { tick: tickUSD, series: [
        { key: 'k-base', type: 'bar', width: 0.85, value: (p) => p.baseline },
        { key: 'k-cost', type: 'bar', width: 0.5, value: (p) => p.cost },
      ] },
      right: { tick: tickUSD, series: [
        { key: 'k-sav', type: 'area', connect: true, value: (p) => p.cumSavings },
      ] },
      tooltip: (p) => [
        ['k-cost', 'Cost', fmtUSD(p.cost)],
        ['k-base', 'All-large baseline', fmtUSD(p.baseline)],
        ['', 'Saved in this ' + per, fmtUSD(p.baseline - p.cost)],
        ['k-sav', 'Cumulative savings', fmtUSD(p.cumSavings)],
      ],
    });

    // energy and efficiency
    const eff = (p) => (p.energy > 0 ? p.out / p.energy : null);
    legend('legend-energy', [
      ['k-energy', 'Energy/' + per, fmtWh(total.energy_wh) + ' total'],
      ['k-eff', 'Output tokens per Wh', fmtTokensPerWh(total.tokens_per_wh)],
    ]);
    timeChart($('chart-energy'), {
      label: 'Energy per ' + per + ' and tokens per Wh',
      from: t0, to: t1, bucket: bucket, points: pts, empty: empty,
      left: { tick: tickWh, series: [{ key: 'k-energy', type: 'bar', width: 0.85, value: (p) => p.energy }] },
      right: { tick: tickCount, series: [{ key: 'k-eff', type: 'line', value: eff }] },
      tooltip: (p) => [
        ['k-energy', 'Energy', fmtWh(p.energy)],
        ['', 'Output tokens', fmtInt(p.out)],
        ['k-eff', 'Tokens per Wh', fmtTokensPerWh(eff(p))],
      ],
    });

    renderLatency(st);
  }

  function tierOrder(st) {
    const order = [];
    const seen = new Set();
    const eps = state.backends && Array.isArray(state.backends.endpoints) ? state.backends.endpoints : [];
    for (const e of eps) {
      if (e && typeof e.tier === 'string' && !seen.has(e.tier)) { seen.add(e.tier); order.push(e.tier); }
    }
    const groups = (st && st.groups) || {};
    const rest = Object.keys(groups).filter((k) => !seen.has(k)).sort();
    return order.filter((k) => groups[k]).concat(rest);
  }

  function renderLatency(st) {
    const box = $('chart-latency');
    box.textContent = '';
    const groups = st.groups || {};
    const tiers = tierOrder(st).filter((k) => groups[k] && (num(groups[k].requests) || 0) > 0 && groups[k].latency_ms);
    legend('legend-latency', [['k-p50', 'p50'], ['k-p95', 'p95'], ['k-p99', 'p99'], [null, 'end-to-end over the window']]);
    if (!tiers.length) {
      box.appendChild(el('div', 'empty', 'No latency data in the last ' + windowLabel()));
      return;
    }
    const W = Math.max(240, box.clientWidth), H = Math.max(120, box.clientHeight);
    const m = { l: 64, r: 64, t: 6, b: 22 };
    const iw = W - m.l - m.r, ih = H - m.t - m.b;
    const svg = S('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-label': 'Latency percentiles by tier' });
    box.appendChild(svg);
    let max = 0;
    for (const k of tiers) {
      for (const q of ['p50', 'p95', 'p99']) max = Math.max(max, num(groups[k].latency_ms[q]) || 0);
    }
    const sc = axisScale(max * 1.02, 5);
    const fmtX = tickMs(sc.step);
    const X = (v) => m.l + v / sc.hi * iw;
    for (let i = 0; i <= sc.n; i++) {
      const v = i * sc.step;
      const x = Math.round(X(v)) + 0.5;
      S('line', { x1: x, x2: x, y1: m.t, y2: m.t + ih, class: i === 0 ? 'axis-line' : 'grid-line' }, svg);
      S('text', { x: x, y: H - 6, 'text-anchor': 'middle' }, svg).textContent = fmtX(v);
    }
    const rowH = ih / tiers.length;
    const barH = Math.max(3, Math.min(16, (rowH - 12) / 3));
    tiers.forEach((k, i) => {
      const top = m.t + i * rowH + (rowH - barH * 3 - 4) / 2;
      S('text', { x: m.l - 8, y: m.t + i * rowH + rowH / 2 + 4, 'text-anchor': 'end', class: 'tier-label' }, svg).textContent = k;
      ['p50', 'p95', 'p99'].forEach((q, j) => {
        const v = num(groups[k].latency_ms[q]) || 0;
        const y = top + j * (barH + 2);
        S('rect', { x: m.l, y: y, width: Math.max(1, X(v) - m.l), height: barH, class: 'bar k-' + q, rx: 2 }, svg);
        if (barH >= 9) {
          S('text', { x: X(v) + 4, y: y + barH / 2 + 4, class: 'bar-label' }, svg).textContent = q + ' ' + fmtMs(v);
        }
      });
    });
  }

  // ---------- tables ----------
  function cell(tr, text, cls) {
    const td = el('td', cls || '', text);
    tr.appendChild(td);
    return td;
  }

  function emptyRow(tbody, cols, text) {
    const tr = el('tr');
    const td = cell(tr, text, 'empty-row');
    td.colSpan = cols;
    tbody.appendChild(tr);
  }

  function triple(o, f) {
    if (!o) return '–';
    return [o.p50, o.p95, o.p99].map(f).join(' / ');
  }

  function renderTiers() {
    const tbody = $('tiers-table').querySelector('tbody');
    tbody.textContent = '';
    const st = state.stats;
    if (!st) { emptyRow(tbody, 11, state.statsErr ? 'Statistics unavailable' : '–'); return; }
    const groups = st.groups || {};
    const tiers = tierOrder(st);
    const all = num(st.total && st.total.requests) || 0;
    if (!tiers.length) { emptyRow(tbody, 11, 'No requests in the last ' + windowLabel()); return; }
    for (const k of tiers) {
      const g = groups[k] || {};
      const tr = el('tr');
      tr.dataset.tier = k;
      cell(tr, k);
      cell(tr, fmtInt(g.requests), 'num');
      cell(tr, all ? fmtPct((num(g.requests) || 0) / all) : '–', 'num');
      cell(tr, fmtInt(g.escalations), 'num');
      cell(tr, fmtInt(g.errors), 'num' + ((num(g.errors) || 0) > 0 ? ' err-text' : ''));
      cell(tr, fmtCompact(g.input_tokens) + ' / ' + fmtCompact(g.output_tokens), 'num');
      cell(tr, fmtUSD(g.cost_usd), 'num');
      cell(tr, fmtWh(g.energy_wh), 'num');
      cell(tr, fmtTokensPerWh(g.tokens_per_wh), 'num');
      cell(tr, triple(g.latency_ms, fmtMs), 'num');
      cell(tr, triple(g.ttft_ms, fmtMs), 'num');
      tbody.appendChild(tr);
    }
  }

  function pill(tr, text, mood) {
    const td = el('td');
    td.appendChild(el('span', 'pill ' + mood, text));
    tr.appendChild(td);
  }

  function renderBackends() {
    const tbody = $('backends-table').querySelector('tbody');
    tbody.textContent = '';
    const sum = $('backends-summary');
    sum.textContent = '';
    const b = state.backends;
    if (!b) { emptyRow(tbody, 12, state.backendsErr ? 'Backend status unavailable: ' + state.backendsErr.message : '–'); return; }
    const eps = Array.isArray(b.endpoints) ? b.endpoints : [];
    if (!eps.length) { emptyRow(tbody, 12, 'No endpoints configured'); return; }
    let up = 0, open = 0;
    for (const e of eps) {
      const tr = el('tr');
      tr.dataset.breaker = e.breaker || '';
      cell(tr, e.tier || '–');
      const u = cell(tr, e.url || '–', 'url');
      u.title = e.url || '';
      cell(tr, e.model || '–');
      if (e.available) up++;
      pill(tr, e.available ? 'available' : 'unavailable', e.available ? 'ok' : 'bad');
      const br = e.breaker || 'unknown';
      if (br === 'open') open++;
      pill(tr, br, br === 'closed' ? 'ok' : br === 'half-open' ? 'warn' : 'bad');
      cell(tr, fmtInt(e.in_flight), 'num');
      cell(tr, fmtMs(e.latency_ms), 'num');
      cell(tr, fmtPct(e.error_rate), 'num' + ((num(e.error_rate) || 0) > 0.05 ? ' err-text' : ''));
      const ld = e.load || {};
      cell(tr, fmtInt(ld.running), 'num');
      cell(tr, fmtInt(ld.waiting), 'num');
      cell(tr, num(ld.kv_cache_usage) === null ? '–' : fmtPct(ld.kv_cache_usage, 0), 'num');
      if (ld.error) {
        const td = cell(tr, 'error: ' + ld.error, 'err-text');
        td.title = ld.error;
      } else {
        cell(tr, ld.scraped_at ? fmtAge(ld.scraped_at) : 'not scraped', ld.scraped_at ? '' : 'muted');
      }
      tbody.appendChild(tr);
    }
    sum.textContent = up + ' of ' + eps.length + ' available' + (open ? ' · ' + open + ' breaker' + (open > 1 ? 's' : '') + ' open' : '');
  }

  function renderRecorder() {
    const st = state.stats;
    const r = st && st.recorder;
    const box = $('recorder');
    const set = (id, v) => { $(id).textContent = r ? fmtInt(v) : '–'; };
    set('rec-written', r && r.written);
    set('rec-queued', r && r.queued);
    set('rec-dropped', r && r.dropped);
    set('rec-errors', r && r.errors);
    const dropped = r ? num(r.dropped) || 0 : 0;
    box.dataset.dropped = r ? String(dropped) : '';
    box.classList.toggle('dropping', dropped > 0);
    $('rec-note').textContent = !r ? '' : dropped > 0
      ? 'Records were dropped because the queue to Redis was full: the figures above undercount. Raise recorder.queue_size or check Redis latency.'
      : 'Every request that reached a backend is queued and written to Redis in batches; none dropped since start.';
  }

  function render() {
    // Without statistics the chart panels shrink to their message.
    document.body.dataset.stats = state.stats ? 'yes' : 'none';
    renderStatus();
    renderKPIs();
    renderCharts();
    renderTiers();
    renderBackends();
    renderRecorder();
  }

  // ---------- wiring ----------
  function buildWindows() {
    const nav = $('windows');
    nav.textContent = '';
    for (const [w, label] of WINDOWS) {
      const b = el('button', '', label);
      b.type = 'button';
      b.dataset.window = w;
      b.setAttribute('aria-pressed', String(w === state.window));
      b.addEventListener('click', () => {
        state.window = w;
        store(WINDOW_KEY, w);
        for (const x of nav.children) x.setAttribute('aria-pressed', String(x.dataset.window === w));
        refresh();
      });
      nav.appendChild(b);
    }
  }

  function init() {
    state.token = load(TOKEN_KEY);
    const w = load(WINDOW_KEY);
    if (WINDOWS.some((x) => x[0] === w)) state.window = w;
    readFragment();
    buildWindows();
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      setToken($('token-input').value);
      $('token-input').value = '';
      if (state.token) showTokenForm(false);
      refresh();
    });
    $('token-forget').addEventListener('click', () => {
      setToken('');
      refresh();
    });
    $('token-button').addEventListener('click', () => showTokenForm($('token-form').hidden));
    $('refresh').addEventListener('click', () => refresh());
    window.addEventListener('hashchange', () => { readFragment(); refresh(); });
    document.addEventListener('visibilitychange', () => {
      if (document.hidden) clearTimeout(state.timer);
      else refresh();
    });
    let resizeTimer = 0;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(renderCharts, 150);
    });
    render();
    refresh();
  }

  // Exposed for tests and the console: formatting and the last answers.
  window.cascadeDashboard = {
    fmt: { usd: fmtUSD, wh: fmtWh, ms: fmtMs, pct: fmtPct, int: fmtInt, compact: fmtCompact },
    state: state,
    refresh: refresh,
  };

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
