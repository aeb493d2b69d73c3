// halobestie operator console: plain JavaScript, no build step, no third-party code.
// Data: the admin API (docs/subsystems/console.md). Live: `admin.counts` over /ws, pushed by
// the server on change (at most about once a second); the page asks the API again only when
// a push says something changed, plus one slow refresh while the socket is down.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const STORE = "halobestie.console";
  const PAGE_SIZE = 25;
  const SLOW_REFRESH_MS = 30000;
  const LIST_REFRESH_MS = 2000;
  const SERIES = [
    ["online", "online", (s) => s.online],
    ["available", "available", (s) => s.available],
    ["busy", "busy", (s) => s.busy],
    ["active", "active sessions", (s) => s.active],
  ];

  let auth = load();
  let socket = null;
  let retryMs = 1000;
  let lastEventId = 0;
  let offsetMs = 0; // server clock minus this device's clock
  let latest = null;
  let samples = [];
  const page = { filter: "all", cursors: [null], index: 0, next: null, rows: [] };
  let listTimer = null;
  let listDirty = false;
  let lastListAt = 0;
  let timers = [];

  // -- storage and HTTP ---------------------------------------------------------------

  function load() {
    try {
      return JSON.parse(sessionStorage.getItem(STORE) || "null");
    } catch (e) {
      return null;
    }
  }

  function save(answer) {
    auth = { access: answer.access_token, refresh: answer.refresh_token, email: answer.user.email };
    sessionStorage.setItem(STORE, JSON.stringify(auth));
  }

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail || code || "HTTP " + status);
      this.status = status;
      this.code = code;
    }
  }

  async function request(method, path, body, token) {
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = r.status === 204 ? {} : await r.json().catch(() => ({}));
    if (!r.ok) throw new ApiError(r.status, data.error, data.detail);
    return data;
  }

  async function refresh() {
    if (!auth) return false;
    try {
      save(await request("POST", "/api/auth/refresh", { refresh_token: auth.refresh }));
      return true;
    } catch (e) {
      return false;
    }
  }

  async function api(method, path, body) {
    try {
      return await request(method, path, body, auth && auth.access);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 401) throw e;
    }
    if (await refresh()) return request(method, path, body, auth.access);
    logout("Your login ended: log in again.");
    throw new ApiError(401, "invalid_token", "logged out");
  }

  // -- login ----------------------------------------------------------------------------

  async function onLogin(event) {
    event.preventDefault();
    const email = $("email").value.trim();
    const password = $("password").value;
    const error = $("login-error");
    error.textContent = "";
    if (!email || !password) {
      error.textContent = "Enter the admin's email and password.";
      return;
    }
    try {
      const answer = await request("POST", "/api/auth/login", { email, password });
      if (answer.user.role !== "admin") {
        error.textContent = "This account is not an admin.";
        return;
      }
      save(answer);
      $("password").value = "";
      start();
    } catch (e) {
      error.textContent = e.code === "invalid_credentials" ? "Wrong email or password." : "Login failed: " + e.message;
    }
  }

  function logout(message) {
    const token = auth && auth.access;
    auth = null;
    sessionStorage.removeItem(STORE);
    if (token) request("POST", "/api/auth/logout", undefined, token).catch(() => {});
    if (socket) socket.close(1000);
    socket = null;
    timers.forEach(clearInterval);
    timers = [];
    $("console-view").hidden = true;
    $("login-view").hidden = false;
    $("logout").hidden = true;
    setLive(false, "not connected");
    $("login-error").textContent = message || "";
    $("email").focus();
  }

  function start() {
    $("login-view").hidden = true;
    $("console-view").hidden = false;
    $("logout").hidden = false;
    loadOverview();
    loadMitras();
    loadEvents();
    connect();
    timers.push(setInterval(tick, 1000));
    timers.push(setInterval(() => { if (!isLive()) { loadOverview(); loadMitras(); } }, SLOW_REFRESH_MS));
    $("main").focus({ preventScroll: true });
  }

  // -- the socket -----------------------------------------------------------------------

  function isLive() {
    return socket !== null && socket.readyState === WebSocket.OPEN;
  }

  function setLive(on, text) {
    const live = $("live");
    live.textContent = text;
    live.className = "live " + (on ? "on" : "off");
  }

  function connect() {
    if (!auth) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + "/ws?token=" + encodeURIComponent(auth.access));
    socket = ws;
    ws.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (e) {
        return;
      }
      if (event.type === "ready") {
        retryMs = 1000;
        setLive(true, "live");
        loadOverview(); // anything missed while reconnecting
      } else if (event.type === "admin.counts") {
        applyOverview(event.data, false);
      }
    };
    ws.onclose = async (closed) => {
      if (socket !== ws || !auth) return;
      socket = null;
      setLive(false, "reconnecting…");
      if (closed.code === 1008 && !(await refresh())) {
        logout("Your login ended: log in again.");
        return;
      }
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    };
  }

  // -- overview -------------------------------------------------------------------------

  async function loadOverview() {
    try {
      const view = await api("GET", "/api/admin/overview");
      samples = view.history.map(toPoint);
      applyOverview(view, true);
    } catch (e) {
      if (e.status !== 401) setLive(isLive(), isLive() ? "live" : "server unreachable");
    }
  }

  function toPoint(s) {
    return {
      at: Date.parse(s.at), online: s.online, available: s.available, busy: s.busy,
      active: s.active == null ? null : s.active,
    };
  }

  function setText(id, value) {
    const el = $(id);
    const text = String(value);
    if (el.textContent !== text) el.textContent = text; // unchanged text: nothing announced
  }

  function applyOverview(view, fromRest) {
    const before = latest;
    latest = view;
    const m = view.mitras;
    setText("count-online", m.online);
    setText("count-available", m.available);
    setText("count-busy", m.busy);
    setText("count-stale", m.stale);
    setText("count-deactivated", m.deactivated);
    setText("count-beacon", view.beacon ? view.beacon.state : "unknown");
    const s = view.sessions;
    for (const key of ["pending_payment", "active", "ended", "expired", "cancelled", "rerouted"]) {
      setText("sessions-" + key, s ? s[key] : "–");
    }
    if (s) {
      const minutes = Math.round(s.window_seconds / 60);
      document.querySelectorAll(".window").forEach((el) => { el.textContent = "(" + minutes + " min)"; });
    }
    applyHealth(view);
    if (!fromRest) {
      samples.push(toPoint({
        at: view.sampled_at, online: m.online, available: m.available, busy: m.busy,
        active: s ? s.active : null,
      }));
    }
    drawChart();
    if (view.last_event_id != null && view.last_event_id > lastEventId) loadEvents();
    if (!before || JSON.stringify(before.mitras) !== JSON.stringify(m) ||
        JSON.stringify(before.sessions) !== JSON.stringify(s)) {
      scheduleList();
    }
  }

  function applyHealth(view) {
    const h = view.health;
    const pg = $("health-postgres");
    pg.textContent = h.postgres;
    pg.className = h.postgres === "ok" ? "ok" : "down";
    const vk = $("health-valkey");
    vk.textContent = h.valkey === "ok" ? "ok" : h.valkey === "disabled" ? "disabled (Postgres only)" :
      h.valkey_reachable ? "degraded: reseeding" : "unreachable";
    vk.className = h.valkey === "ok" ? "ok" : "down";
    const src = $("health-source");
    src.textContent = h.fallback ? "Postgres (fallback)" : "Valkey";
    src.className = h.fallback ? "degraded" : "ok";
    setText("health-events", h.events_subscribed ? "subscribed" : "this instance only");
    setText("health-instance", h.instance_id.slice(0, 8));
    setText("health-updated", clock(Date.parse(view.sampled_at)));
    const banner = $("fallback");
    const wasHidden = banner.hidden;
    banner.hidden = !h.fallback;
    if (wasHidden !== banner.hidden && latest) {
      note(h.fallback ? "Valkey unavailable: reads fall back to Postgres" : "Valkey back: reads from Valkey again");
    }
  }

  // -- chart (chart.js) -------------------------------------------------------------------

  function drawChart() {
    samples = window.HalobestieChart.draw({
      svg: $("chart"), legend: $("legend"), desc: $("chart-desc"), title: $("chart-title"),
      samples, now: Date.now() + offsetMs, series: SERIES,
    });
  }

  // -- the mitra list -------------------------------------------------------------------

  function scheduleList() {
    listDirty = true;
    if (listTimer) return;
    const wait = Math.max(0, LIST_REFRESH_MS - (Date.now() - lastListAt));
    listTimer = setTimeout(() => {
      listTimer = null;
      if (listDirty) loadMitras();
    }, wait);
  }

  async function loadMitras() {
    listDirty = false;
    lastListAt = Date.now();
    const params = new URLSearchParams({ filter: page.filter, limit: String(PAGE_SIZE) });
    const cursor = page.cursors[page.index];
    if (cursor) params.set("after", cursor);
    try {
      const answer = await api("GET", "/api/admin/mitra-states?" + params);
      offsetMs = Date.parse(answer.server_now) - Date.now();
      page.next = answer.next_after;
      page.rows = answer.mitras;
      renderMitras();
    } catch (e) {
      if (e.status !== 401) setText("page-info", "list unavailable: " + e.message);
    }
  }

  function cell(row, label, className) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function renderMitras() {
    const body = $("mitra-rows");
    const focused = document.activeElement && document.activeElement.dataset.mitra;
    body.replaceChildren();
    for (const m of page.rows) {
      const tr = document.createElement("tr");
      tr.dataset.id = m.id;
      const who = cell(tr, "Mitra", "who");
      const name = document.createElement("strong");
      name.textContent = m.display_name;
      const email = document.createElement("small");
      email.textContent = m.email;
      who.append(name, email);
      const badge = document.createElement("span");
      badge.className = "badge " + m.state;
      badge.textContent = m.state === "stale" ? "stale heartbeat" : m.state;
      cell(tr, "State").append(badge);
      cell(tr, "Load", "num").textContent = m.open_sessions + " / " + m.capacity;
      const beat = cell(tr, "Heartbeat", "num");
      beat.dataset.at = m.last_heartbeat_at || "";
      beat.textContent = age(m.last_heartbeat_at);
      const session = cell(tr, "Session", "num");
      if (m.sessions.length) {
        const s = m.sessions[0];
        session.dataset.deadline = s.deadline;
        session.dataset.status = s.status;
        session.textContent = sessionText(s.status, s.deadline) + (m.sessions.length > 1 ? " (+" + (m.sessions.length - 1) + ")" : "");
      } else {
        session.textContent = "—";
      }
      const action = cell(tr, "Action");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.mitra = m.id;
      button.dataset.active = String(m.is_active);
      button.className = m.is_active ? "danger" : "restore";
      button.textContent = m.is_active ? "Deactivate" : "Reactivate";
      button.setAttribute("aria-label", (m.is_active ? "Deactivate " : "Reactivate ") + m.display_name);
      button.addEventListener("click", () => toggle(m, button));
      action.append(button);
      body.append(tr);
      if (focused === m.id) button.focus(); // keep keyboard focus across refreshes
    }
    const first = page.index * PAGE_SIZE + 1;
    setText("page-info", page.rows.length ? "mitras " + first + "–" + (first + page.rows.length - 1) : "no mitra here");
    $("prev").disabled = page.index === 0;
    $("next").disabled = !page.next;
  }

  async function toggle(m, button) {
    const activate = !m.is_active;
    if (!activate && !window.confirm("Deactivate " + m.display_name + "? Their open sessions end now and they are logged out.")) {
      return;
    }
    button.disabled = true;
    try {
      await api("PATCH", "/api/admin/mitras/" + m.id, { is_active: activate });
      setText("action-status", (activate ? "Reactivated " : "Deactivated ") + m.display_name + ".");
      note((activate ? "You reactivated " : "You deactivated ") + m.display_name);
      await Promise.all([loadMitras(), loadOverview()]);
    } catch (e) {
      button.disabled = false;
      setText("action-status", "Could not change " + m.display_name + ": " + e.message);
    }
  }

  function changeFilter() {
    page.filter = $("filter").value;
    page.cursors = [null];
    page.index = 0;
    loadMitras();
  }

  function nextPage() {
    if (!page.next) return;
    page.cursors = page.cursors.slice(0, page.index + 1).concat([page.next]);
    page.index += 1;
    loadMitras();
  }

  function prevPage() {
    if (page.index === 0) return;
    page.index -= 1;
    loadMitras();
  }

  // -- recent events --------------------------------------------------------------------

  async function loadEvents() {
    try {
      const answer = await api("GET", "/api/admin/session-events?limit=40&after_id=" + lastEventId);
      const list = $("events");
      for (const e of answer.events.slice().reverse()) {
        lastEventId = Math.max(lastEventId, e.id);
        const li = document.createElement("li");
        const time = document.createElement("time");
        time.dateTime = e.at;
        time.textContent = clock(Date.parse(e.at));
        const from = e.from_status ? e.from_status.replace("_", " ") + " → " : "";
        li.append(time, e.mitra_name + ": " + from + e.to_status.replace("_", " ") + " (" + e.actor_role + ", " + e.reason + ")");
        list.prepend(li);
      }
      trimEvents();
    } catch (e) {
      /* the next push retries */
    }
  }

  function note(text) {
    const li = document.createElement("li");
    li.className = "note";
    const time = document.createElement("time");
    time.textContent = clock(Date.now() + offsetMs);
    li.append(time, text);
    $("events").prepend(li);
    trimEvents();
  }

  function trimEvents() {
    const list = $("events");
    while (list.children.length > 60) list.lastElementChild.remove();
  }

  // -- drift ----------------------------------------------------------------------------

  function renderDrift(report) {
    const out = $("drift-result");
    out.replaceChildren();
    const head = document.createElement("p");
    const d = report.differences;
    if (report.in_sync) {
      head.textContent = "In sync: Valkey matches Postgres.";
      head.className = "ok";
      out.append(head);
      return;
    }
    head.textContent = "Drift found:";
    head.className = "degraded";
    const list = document.createElement("ul");
    const lines = [
      ["online set", d.online.missing.length + " missing, " + d.online.extra.length + " extra"],
      ["deactivated set", d.deactivated.missing.length + " missing, " + d.deactivated.extra.length + " extra"],
      ["capacity", Object.keys(d.capacity).length + " differ"],
      ["heartbeat", Object.keys(d.heartbeat).length + " differ"],
    ];
    if (d.ranked) lines.push(["ranked index", d.ranked.missing.length + " missing, " + d.ranked.extra.length + " extra, " + Object.keys(d.ranked.score).length + " scores differ"]);
    for (const [what, text] of lines) {
      const li = document.createElement("li");
      li.textContent = what + ": " + text;
      list.append(li);
    }
    out.append(head, list);
  }

  async function checkDrift() {
    $("drift-result").textContent = "Comparing…";
    try {
      renderDrift(await api("GET", "/api/admin/availability/drift"));
    } catch (e) {
      $("drift-result").textContent = "Cannot compare now: " + e.message;
    }
  }

  async function reseed() {
    $("drift-result").textContent = "Reseeding…";
    try {
      const counts = await api("POST", "/api/admin/availability/reseed");
      note("Reseeded Valkey: " + Object.entries(counts).map(([k, v]) => k + " " + v).join(", "));
      await checkDrift();
      loadOverview();
    } catch (e) {
      $("drift-result").textContent = "Reseed failed: " + e.message;
    }
  }

  // -- every second: ages and countdowns, from the server's clock -------------------------

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }

  function age(at) {
    if (!at) return "never";
    return duration((Date.now() + offsetMs - Date.parse(at)) / 1000) + " ago";
  }

  function sessionText(status, deadline) {
    const left = (Date.parse(deadline) - (Date.now() + offsetMs)) / 1000;
    if (status === "active") return left > 0 ? "active, " + duration(left) + " left" : "active, due to expire";
    return left > 0 ? "awaiting payment, " + duration(left) + " left" : "awaiting payment, due";
  }

  function tick() {
    for (const td of document.querySelectorAll("#mitra-rows td[data-at]")) {
      td.textContent = age(td.dataset.at);
    }
    for (const td of document.querySelectorAll("#mitra-rows td[data-deadline]")) {
      td.textContent = sessionText(td.dataset.status, td.dataset.deadline);
    }
  }

  // -- wiring ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", () => logout("Logged out."));
    $("filter").addEventListener("change", changeFilter);
    $("next").addEventListener("click", nextPage);
    $("prev").addEventListener("click", prevPage);
    $("drift-check").addEventListener("click", checkDrift);
    $("reseed").addEventListener("click", reseed);
    window.addEventListener("resize", () => { if (latest) drawChart(); });
    if (auth) start();
    else $("email").focus();
  });
})();
