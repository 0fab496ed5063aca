// policyfabric web console: topology, connectivity matrix, agents and faults, kept live.
// Plain JavaScript, no library and nothing fetched from elsewhere: the page reads only the
// authority's REST API, with the operator's token, so it sees what that token sees.
"use strict";

const KINDS = ["tenant", "external_network", "l3_context", "bridge_domain", "subnet", "contract",
  "security_group", "endpoint_group", "endpoint", "router", "floating_ip"];
const collection = (kind) => kind.replace(/_/g, "-") + "s";
const COLLAPSE_AT = 24;          // a group with more endpoints starts collapsed
const CHIP_W = 150, CHIP_H = 34, GAP = 8, PAD = 10, HEAD = 24;
const SUBNET_W = 190, SUBNET_H = 22;
const TOKEN_KEY = "policyfabric.token";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  objects: Object.fromEntries(KINDS.map((k) => [k, new Map()])),
  revision: 0,
  agents: null, faults: null, globalError: "",
  tenant: "", view: "topology", groupBy: "epg",
  expanded: new Set(), collapsed: new Set(), found: "",
  matrix: null, live: "off", firstRender: null,
  clockSkew: 0, // the authority's clock minus the browser's, in seconds (from responses' Date)
};

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const key = (o) => `${o.tenant || ""}/${o.name}`;
const list = (kind, tenant) => [...state.objects[kind].values()]
  .filter((o) => tenant === undefined || o.tenant === tenant)
  .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

// ---- the REST API ------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.field = (body && body.error && body.error.field) || null;
  }
}

function headers() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: headers() });
  const date = Date.parse(response.headers.get("date") || "");
  if (!Number.isNaN(date)) {  // Date has whole seconds: a skew under 2 s is noise
    const skew = (date - Date.now()) / 1000;
    state.clockSkew = Math.abs(skew) < 2 ? 0 : skew;
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) { askToken(body && body.error && body.error.message); }
  if (!response.ok) throw new HttpError(response.status, body);
  return body;
}

function askToken(why) {
  stopLive();
  $("login").hidden = false;
  document.querySelector("main").hidden = true;
  $("login-error").textContent = state.token ? (why || "the token was refused") : "";
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("login").hidden = true;
  document.querySelector("main").hidden = false;
  start();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  location.reload();
});

// ---- loading and keeping up ----------------------------------------------------------------

// Tenants, external networks and routers (few; the gateway table spans tenants) are read whole;
// the other kinds for the tenant on screen only, so a page never downloads every tenant's endpoints.
const WHOLE = ["tenant", "external_network", "router"];
const shown = (kind, tenant) => WHOLE.includes(kind) || tenant === state.tenant;

async function loadKinds(kinds) {
  const path = (kind) => `/v1/${collection(kind)}` + (WHOLE.includes(kind) ? "" : `?tenant=${encodeURIComponent(state.tenant)}`);
  const wanted = kinds.filter((kind) => WHOLE.includes(kind) || state.tenant);
  const pages = await Promise.all(wanted.map((kind) => api(path(kind))));
  let revision = Infinity;
  kinds.forEach((kind) => { if (!wanted.includes(kind)) state.objects[kind] = new Map(); });
  wanted.forEach((kind, i) => {
    state.objects[kind] = new Map(pages[i].items.map((o) => [key(o), o]));
    revision = Math.min(revision, pages[i].revision);
  });
  return revision;
}

async function loadGlobal() {
  try {
    const [agents, faults] = await Promise.all([api("/v1/agents"), api("/v1/faults")]);
    state.agents = agents.items; state.faults = faults.items; state.globalError = "";
  } catch (e) {
    if (e.status !== 403) throw e;
    state.agents = null; state.faults = null; state.globalError = e.message;
  }
}

async function loadAll() {
  const page = await api("/v1/tenants");
  state.objects.tenant = new Map(page.items.map((o) => [key(o), o]));
  const tenants = list("tenant").map((t) => t.name);
  const asked = new URLSearchParams(location.search).get("tenant");
  if (!tenants.includes(state.tenant)) state.tenant = tenants.includes(asked) ? asked : tenants[0] || "";
  const select = $("tenant");
  select.innerHTML = tenants.map((t) => `<option${t === state.tenant ? " selected" : ""}>${esc(t)}</option>`).join("");
  state.revision = Math.min(page.revision, await loadKinds(KINDS.filter((k) => k !== "tenant")));
  await loadGlobal();
}

// a change to what the matrix is computed from: read it again when it is next shown
const POLICY = ["endpoint_group", "contract", "security_group", "endpoint", "tenant"];
function touched(kind) { if (POLICY.includes(kind)) state.matrix = null; }

let refreshTimer = null;
let pendingKinds = new Set();
function scheduleRefresh(kinds) {
  kinds.forEach((k) => pendingKinds.add(k));
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const kinds = [...pendingKinds].filter((k) => KINDS.includes(k));
    pendingKinds = new Set();
    try {
      if (kinds.includes("tenant")) await loadAll();
      else if (kinds.length) await loadKinds(kinds);
      await refreshView(kinds);
    } catch (e) { status(e.message); }
  }, 150);
}

// one change as the events stream sends it: apply it in place when it carries the object
function applyChange(change) {
  const kind = change.kind;
  if (change.revision) state.revision = Math.max(state.revision, change.revision);
  if (!state.objects[kind] || !shown(kind, change.tenant)) return;
  const id = `${change.tenant || ""}/${change.name}`;
  touched(kind);
  if (change.op === "delete") state.objects[kind].delete(id);
  else if (change.object) state.objects[kind].set(id, change.object);
  else { scheduleRefresh([kind]); return; }
  scheduleRefresh(kind === "tenant" ? ["tenant"] : []);
}

function applyStatus(event) {
  const id = `${event.tenant || ""}/${event.name}`;
  const ep = state.objects.endpoint.get(id);
  if (ep) {
    ep.status = event.status;
    if (event.host) ep.host = event.host;
  }
  if (event.revision) state.revision = Math.max(state.revision, event.revision);
  scheduleRefresh([]);
}

function applyAgent(event) {
  if (state.agents) {
    const agent = state.agents.find((a) => a.name === event.name);
    // the event does not carry when it rendered: a new revision reads the agents again for it
    if (!agent || event.rendered_revision !== agent.rendered_revision) scheduleGlobal();
    if (agent) Object.assign(agent, event);
  }
  scheduleRefresh([]);
}

let globalTimer = null;
function scheduleGlobal() {
  if (globalTimer) return;
  globalTimer = setTimeout(async () => {
    globalTimer = null;
    try { await loadGlobal(); await refreshView([]); } catch (e) { status(e.message); }
  }, 300);
}

let liveAbort = null;
let pollTimer = null;
function stopLive() {
  if (liveAbort) liveAbort.abort();
  liveAbort = null;
  clearTimeout(pollTimer);
  setLive("off");
}

function setLive(mode) {
  state.live = mode;
  const el = $("live");
  el.className = `live ${mode}`;
  el.textContent = { events: "live (events)", polling: "live (polling)", off: "offline" }[mode];
}

// The events stream (server-sent events) read with fetch(), not EventSource: EventSource cannot
// send the Authorization header. Without the stream (404) the page polls /v1/changes instead.
async function follow() {
  const abort = new AbortController();
  liveAbort = abort;
  let response;
  try {
    response = await fetch(`/v1/events?since=${state.revision}`,
      { headers: { ...headers(), Accept: "text/event-stream" }, signal: abort.signal });
  } catch (e) {
    if (abort.signal.aborted) return;
    setLive("off"); pollTimer = setTimeout(follow, 2000); return;
  }
  if (response.status === 404 || response.status === 405) { poll(); return; }
  if (response.status === 401) { askToken(); return; }
  if (!response.ok || !response.body) { setLive("off"); pollTimer = setTimeout(follow, 2000); return; }
  setLive("events");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        dispatch(block);
      }
    }
  } catch (e) {
    if (abort.signal.aborted) return;
  }
  if (abort.signal.aborted) return;
  setLive("off");
  await resync();
  pollTimer = setTimeout(follow, 1000);
}

function dispatch(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let payload;
  try { payload = JSON.parse(data.join("\n")); } catch (e) { return; }
  if (event === "change") applyChange(payload);
  else if (event === "status") applyStatus(payload);
  else if (event === "agent") applyAgent(payload);
  else if (event === "cut") resync(); // the stream fell too far behind: read everything again
}

async function resync() {
  try { await loadAll(); await refreshView(KINDS); } catch (e) { status(e.message); }
}

// Polling: each change (an endpoint's status too is one) is read back by name, so a poll costs
// what changed, not the tenant's size; past FETCH_ONE changes the kinds are read whole instead.
const FETCH_ONE = 50;
async function poll() {
  setLive("polling");
  try {
    const page = await api(`/v1/changes?since=${state.revision}`);
    const mine = page.changes.filter((c) => shown(c.kind, c.tenant) && state.objects[c.kind]);
    if (mine.length > FETCH_ONE || mine.some((c) => c.kind === "tenant")) {
      scheduleRefresh([...new Set(mine.map((c) => c.kind))]);
    } else if (mine.length) {
      await Promise.all(mine.map(async (c) => {
        const q = new URLSearchParams({ name: c.name, ...(c.tenant ? { tenant: c.tenant } : {}) });
        const found = c.op === "delete" ? { items: [] } : await api(`/v1/${collection(c.kind)}?${q}`);
        const id = `${c.tenant || ""}/${c.name}`;
        touched(c.kind);
        if (found.items.length) state.objects[c.kind].set(id, found.items[0]);
        else state.objects[c.kind].delete(id);
      }));
      scheduleRefresh([]);
    }
    state.revision = page.until;
  } catch (e) {
    if (e.status === 401) return;
    setLive("off");
  }
  pollTimer = setTimeout(poll, 1000);
}

// ---- views ---------------------------------------------------------------------------------

function status(text) { $("status").textContent = text || ""; }

async function refreshView(kinds) {
  $("revision").textContent = state.revision ? `revision ${state.revision}` : "";
  if (state.view === "topology") renderTopology();
  else if (state.view === "matrix") {
    if (!state.matrix || !kinds || kinds.some((k) => POLICY.includes(k))) await loadMatrix();
    renderMatrix();
  } else renderAgents();
}

function showView(view) {
  state.view = ["topology", "matrix", "agents"].includes(view) ? view : "topology";
  for (const v of ["topology", "matrix", "agents"]) $(`view-${v}`).hidden = v !== state.view;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.view === state.view));
  refreshView(null).catch((e) => status(e.message));
}

window.addEventListener("hashchange", () => showView(location.hash.slice(1)));
$("tenant").addEventListener("change", async (e) => {
  state.tenant = e.target.value; state.matrix = null;
  try { await loadAll(); await refreshView(null); } catch (err) { status(err.message); }
});

// ---- topology ------------------------------------------------------------------------------

// faults whose object is an endpoint (its OpFlex URI), by endpoint key ("tenant/name")
const EP_URI = /\/PolicySpace\/([^/]+)\/PfEndpoint\/([^/]+)\//;
function faultsByEndpoint() {
  const found = new Map();
  for (const f of state.faults || []) {
    const m = EP_URI.exec(f.uri || "");
    if (!m) continue;
    const id = `${decodeURIComponent(m[1])}/${decodeURIComponent(m[2])}`;
    if (!found.has(id)) found.set(id, []);
    found.get(id).push(f);
  }
  return found;
}

function activeGateways() {
  const active = new Map(); // "tenant/router" -> host
  for (const a of state.agents || []) for (const r of a.gateway_for || []) active.set(r, a.name);
  return active;
}

function isCollapsed(id, n) {
  if (state.expanded.has(id)) return false;
  if (state.collapsed.has(id)) return true;
  return n > COLLAPSE_AT;
}

// A box of endpoints (an EPG, or a host): its size, and a function drawing it at (x, y).
function groupBox(id, title, subtitle, endpoints, maxWidth, ctx) {
  const n = endpoints.length;
  const collapsed = isCollapsed(id, n);
  const maxCols = Math.max(1, Math.floor((maxWidth - 2 * PAD + GAP) / (CHIP_W + GAP)));
  let w, h, cols = 1;
  if (collapsed || n === 0) {
    w = 2 * CHIP_W + GAP + 2 * PAD; h = HEAD + 44;
  } else {
    cols = Math.min(n, maxCols, Math.max(2, Math.ceil(Math.sqrt(n * 2))));
    const rows = Math.ceil(n / cols);
    w = Math.max(2 * CHIP_W + GAP, cols * CHIP_W + (cols - 1) * GAP) + 2 * PAD;
    h = HEAD + rows * (CHIP_H + GAP) + PAD;
  }
  const titleW = 2 * PAD + 8.5 * title.length + 6.2 * (subtitle.length + 18); // about what the text takes
  w = Math.min(Math.max(w, titleW), maxWidth);
  const draw = (x, y, out) => {
    if (ctx.placed) ctx.placed.set(id, { x: x + w / 2, y });
    out.push(`<g class="group" data-group="${esc(id)}"><rect class="groupbox" x="${x}" y="${y}" width="${w}" height="${h}" rx="6"/>`);
    out.push(`<text class="title" x="${x + PAD}" y="${y + 16}">${esc(title)}<tspan class="sub"> ${esc(subtitle)} · ${n} endpoint${n === 1 ? "" : "s"} ${n ? (collapsed ? "▸" : "▾") : ""}</tspan></text></g>`);
    if (n === 0) {
      out.push(`<text class="sub" x="${x + PAD}" y="${y + HEAD + 20}">no endpoints</text>`);
      return;
    }
    if (collapsed) {
      const counts = { ACTIVE: 0, BUILD: 0, DOWN: 0 };
      let faulty = 0;
      for (const ep of endpoints) {
        counts[ep.status in counts ? ep.status : "DOWN"] += 1;
        if (ctx.faults.has(key(ep))) faulty += 1;
      }
      const barW = w - 2 * PAD;
      let bx = x + PAD;
      for (const s of ["ACTIVE", "BUILD", "DOWN"]) {
        const bw = (barW * counts[s]) / n;
        if (bw > 0) out.push(`<rect class="st ${s}" x="${bx}" y="${y + HEAD + 4}" width="${bw}" height="10"><title>${s}: ${counts[s]}</title></rect>`);
        bx += bw;
      }
      out.push(`<text class="sub" x="${x + PAD}" y="${y + HEAD + 32}">${counts.ACTIVE} active, ${counts.BUILD} build, ${counts.DOWN} down${faulty ? `, ${faulty} with faults` : ""} · click to expand</text>`);
      return;
    }
    endpoints.forEach((ep, i) => {
      const cx = x + PAD + (i % cols) * (CHIP_W + GAP);
      const cy = y + HEAD + Math.floor(i / cols) * (CHIP_H + GAP);
      const st = ["ACTIVE", "BUILD", "DOWN"].includes(ep.status) ? ep.status : "DOWN";
      const fault = ctx.faults.has(key(ep)) ? " fault" : "";
      const hit = ep.name === state.found ? " found" : "";
      const line2 = ctx.second(ep);
      out.push(`<g class="ep${hit}" data-ep="${esc(key(ep))}" id="ep-${esc(key(ep))}"><rect class="chip st ${st}${fault}" x="${cx}" y="${cy}" width="${CHIP_W}" height="${CHIP_H}" rx="4"/>`
        + `<text class="epname" x="${cx + 6}" y="${cy + 14}">${esc(ep.name)}</text>`
        + `<text class="eptext" x="${cx + 6}" y="${cy + 28}">${esc(line2)}</text>`
        + `<title>${esc(ep.name)} ${st}${(ep.security_groups || []).length ? ` · security groups ${esc(ep.security_groups.join(", "))}` : ""}</title></g>`);
    });
  };
  return { w, h, draw };
}

// Pack boxes into rows of at most `width`; returns the height used.
function flow(boxes, x0, y0, width, out) {
  let x = x0, y = y0, rowH = 0;
  for (const b of boxes) {
    if (x > x0 && x + b.w > x0 + width) { x = x0; y += rowH + GAP; rowH = 0; }
    b.draw(x, y, out);
    x += b.w + GAP; rowH = Math.max(rowH, b.h);
  }
  return boxes.length ? y + rowH - y0 : 0;
}

function renderTopology() {
  const t0 = performance.now();
  const tenant = state.tenant;
  const el = $("topology");
  const width = Math.max(700, el.clientWidth - 4);
  const out = [];
  const lines = [];
  const ctx = { faults: faultsByEndpoint() };
  const endpoints = list("endpoint", tenant);
  const subnetAt = new Map(); // subnet name -> its chip's centre top
  let y = 10;
  const active = activeGateways();

  // the outside: external networks with their floating IPs
  const externals = list("external_network");
  const fips = list("floating_ip", tenant);
  const extAt = new Map();
  if (externals.length) {
    let x = 10;
    for (const net of externals) {
      const mine = fips.filter((f) => f.network === net.name);
      const w = Math.max(240, 60 + 7 * Math.max(...mine.map((f) => `${f.name} ${f.ip} → ${f.endpoint || "-"}`.length), 20));
      const h = 40 + mine.length * 16;
      out.push(`<g class="ext" data-obj="external_network:${esc(net.name)}"><rect class="extbox" x="${x}" y="${y}" width="${w}" height="${h}" rx="6"/>`
        + `<text class="title" x="${x + PAD}" y="${y + 16}">⬡ ${esc(net.name)}<tspan class="sub"> external ${esc(net.cidr)}</tspan></text></g>`);
      mine.forEach((f, i) => out.push(`<text class="fip" data-obj="floating_ip:${esc(f.name)}" x="${x + PAD}" y="${y + 34 + i * 16}">floating IP ${esc(f.name)} ${esc(f.ip || "")} → ${esc(f.endpoint || "(unbound)")}</text>`));
      extAt.set(net.name, { x: x + w / 2, y: y + h });
      x += w + GAP * 2;
    }
    y += 40 + Math.max(0, ...externals.map((n) => fips.filter((f) => f.network === n.name).length)) * 16 + 30;
  }

  // routers
  const routers = list("router", tenant);
  const routerAt = new Map();
  if (routers.length) {
    let x = 10;
    for (const r of routers) {
      const gw = r.external_gateway;
      const who = active.get(`${tenant}/${r.name}`);
      const text = gw ? `gateway ${gw.network}${gw.snat ? " SNAT" : ""} ${gw.ip || ""} · active: ${who || (state.agents ? "none" : "?")}` : "no external gateway";
      const w = Math.max(200, 40 + 6.5 * text.length);
      out.push(`<g class="router" data-obj="router:${esc(r.name)}"><rect class="routerbox" x="${x}" y="${y}" width="${w}" height="40" rx="20"/>`
        + `<text class="title" x="${x + 16}" y="${y + 17}">⊕ ${esc(r.name)}</text><text class="sub" x="${x + 16}" y="${y + 32}">${esc(text)}</text></g>`);
      routerAt.set(r.name, { x: x + w / 2, y: y + 40, top: y });
      if (gw && extAt.has(gw.network)) {
        const e = extAt.get(gw.network);
        lines.push(`<line class="link gw" x1="${x + w / 2}" y1="${y}" x2="${e.x}" y2="${e.y}"/>`);
      }
      x += w + GAP * 2;
    }
    y += 70;
  }

  if (state.groupBy === "host") {
    ctx.placed = new Map();
    y = drawHosts(endpoints, width, y, out, ctx, active);
    for (const r of routers) { // the router's SNAT traffic goes to its active gateway host
      const host = ctx.placed.get(`host:${active.get(`${tenant}/${r.name}`)}`);
      if (host) lines.push(`<line class="link gw" x1="${routerAt.get(r.name).x}" y1="${routerAt.get(r.name).y}" x2="${host.x}" y2="${host.y}"/>`);
    }
  } else {
    y = drawTenant(tenant, endpoints, width, y, out, ctx, subnetAt);
  }
  for (const r of routers) {
    const from = routerAt.get(r.name);
    for (const s of r.interfaces || []) {
      const to = subnetAt.get(s);
      if (to) lines.push(`<line class="link" x1="${from.x}" y1="${from.y}" x2="${to.x}" y2="${to.y}"/>`);
    }
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 10}" viewBox="0 0 ${width} ${y + 10}">${out.join("")}${lines.join("")}</svg>`;
  el.innerHTML = endpoints.length || routers.length || list("l3_context", tenant).length ? svg
    : `<p class="hint">${tenant ? `Tenant ${esc(tenant)} declares nothing yet.` : "No tenant is visible with this token."}</p>`;
  const ms = performance.now() - t0;
  // when the first topology with endpoints was painted, since navigation began (bench/console.py):
  // the next frame, then the task after it, so layout and paint are counted
  if (state.firstRender === null && endpoints.length) {
    state.firstRender = ms;
    const n = endpoints.length;
    requestAnimationFrame(() => setTimeout(() => {
      window.pfFirstTopology = { at: performance.now(), render: ms, endpoints: n };
    }, 0));
  }
  el.dataset.renderMs = ms.toFixed(1);
  el.dataset.endpoints = String(endpoints.length);
  el.dataset.revision = String(state.revision);
}

function drawTenant(tenant, endpoints, width, y, out, ctx, subnetAt) {
  const byEpg = new Map();
  const bySubnet = new Map(); // endpoints without an EPG (plain Neutron mode), by subnet
  for (const ep of endpoints) {
    if (ep.epg) {
      if (!byEpg.has(ep.epg)) byEpg.set(ep.epg, []);
      byEpg.get(ep.epg).push(ep);
    } else {
      const s = ep.subnet || "";
      if (!bySubnet.has(s)) bySubnet.set(s, []);
      bySubnet.get(s).push(ep);
    }
  }
  ctx.second = (ep) => `${(ep.ip || []).join(" ") || "-"} · ${ep.host || "unbound"}`;
  const subnets = list("subnet", tenant);
  const bds = list("bridge_domain", tenant);
  const epgs = list("endpoint_group", tenant);
  for (const vrf of list("l3_context", tenant)) {
    const top = y;
    const inner = [];
    let iy = y + HEAD + 6;
    const bdWidth = width - 20 - 2 * PAD;
    for (const bd of bds.filter((b) => b.l3_context === vrf.name)) {
      const bdTop = iy;
      const body = [];
      let by = iy + HEAD;
      // subnets as chips
      const mine = subnets.filter((s) => s.bridge_domain === bd.name);
      let sx = 10 + 2 * PAD;
      for (const s of mine) {
        if (sx + SUBNET_W > 10 + PAD + bdWidth) { sx = 10 + 2 * PAD; by += SUBNET_H + 6; }
        body.push(`<g class="subnet" data-obj="subnet:${esc(s.name)}"><rect class="subnetbox" x="${sx}" y="${by}" width="${SUBNET_W}" height="${SUBNET_H}" rx="11"/>`
          + `<text class="eptext" x="${sx + 10}" y="${by + 15}">${esc(s.name)} ${esc(s.cidr)}</text></g>`);
        subnetAt.set(s.name, { x: sx + SUBNET_W / 2, y: by });
        sx += SUBNET_W + GAP;
      }
      if (mine.length) by += SUBNET_H + GAP;
      const boxes = epgs.filter((g) => g.bridge_domain === bd.name).map((g) => groupBox(
        `epg:${g.name}`, g.name, `EPG${g.intra_group === "deny" ? " (intra deny)" : ""}`, byEpg.get(g.name) || [], bdWidth - 2 * PAD, ctx));
      for (const s of mine) {
        if (bySubnet.has(s.name)) boxes.push(groupBox(`subnet:${s.name}`, s.name, "no EPG (security groups)", bySubnet.get(s.name), bdWidth - 2 * PAD, ctx));
      }
      by += flow(boxes, 10 + 2 * PAD, by, bdWidth - 2 * PAD, body) + PAD;
      inner.push(`<rect class="bdbox" x="${10 + PAD}" y="${bdTop}" width="${bdWidth}" height="${by - bdTop}" rx="6"/>`
        + `<text class="title" x="${10 + 2 * PAD}" y="${bdTop + 16}" data-obj="bridge_domain:${esc(bd.name)}">${esc(bd.name)}<tspan class="sub"> bridge domain · MTU ${esc(bd.mtu)}</tspan></text>`);
      inner.push(...body);
      iy = by + GAP;
    }
    out.push(`<rect class="vrfbox" x="10" y="${top}" width="${width - 20}" height="${iy - top + PAD}" rx="8"/>`
      + `<text class="title" x="${10 + PAD}" y="${top + 18}" data-obj="l3_context:${esc(vrf.name)}">${esc(vrf.name)}<tspan class="sub"> l3 context of tenant ${esc(tenant)}</tspan></text>`);
    out.push(...inner);
    y = iy + PAD + 12;
  }
  return y;
}

function drawHosts(endpoints, width, y, out, ctx, active) {
  const byHost = new Map();
  for (const a of state.agents || []) byHost.set(a.name, []);
  for (const ep of endpoints) {
    const h = ep.host || "(unbound)";
    if (!byHost.has(h)) byHost.set(h, []);
    byHost.get(h).push(ep);
  }
  ctx.second = (ep) => `${ep.epg || ep.subnet || "-"} · ${(ep.ip || [])[0] || "-"}`;
  const gateways = new Map();
  for (const [router, host] of active) gateways.set(host, [...(gateways.get(host) || []), router]);
  const agents = new Map((state.agents || []).map((a) => [a.name, a]));
  const boxes = [...byHost.keys()].sort().map((h) => {
    const a = agents.get(h);
    const sub = `host${a ? (a.connected ? " · connected" : " · disconnected") : ""}${gateways.has(h) ? ` · active gateway of ${gateways.get(h).join(", ")}` : ""}`;
    return groupBox(`host:${h}`, h, sub, byHost.get(h).sort((p, q) => (p.name < q.name ? -1 : 1)), width - 20, ctx);
  });
  return y + flow(boxes, 10, y, width - 20, out) + 20;
}

$("topology").addEventListener("click", (event) => {
  const ep = event.target.closest("[data-ep]");
  if (ep) { showEndpoint(ep.dataset.ep); return; }
  const group = event.target.closest("[data-group]");
  if (group) {
    const id = group.dataset.group;
    const n = groupSize(id);
    if (isCollapsed(id, n)) { state.expanded.add(id); state.collapsed.delete(id); }
    else { state.collapsed.add(id); state.expanded.delete(id); }
    renderTopology();
    showObject(id);
    return;
  }
  const obj = event.target.closest("[data-obj]");
  if (obj) showObject(obj.dataset.obj);
});

function groupSize(id) {
  const [kind, name] = [id.slice(0, id.indexOf(":")), id.slice(id.indexOf(":") + 1)];
  return list("endpoint", state.tenant).filter((ep) =>
    (kind === "epg" && ep.epg === name) || (kind === "host" && (ep.host || "(unbound)") === name)
    || (kind === "subnet" && !ep.epg && ep.subnet === name)).length;
}

function table(obj) {
  return `<table class="kv">${Object.entries(obj).map(([k, v]) =>
    `<tr><th>${esc(k)}</th><td>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v)}</td></tr>`).join("")}</table>`;
}

function showEndpoint(id) {
  const ep = state.objects.endpoint.get(id);
  if (!ep) return;
  const faults = faultsByEndpoint().get(id) || [];
  $("details").innerHTML = `<h3>endpoint ${esc(ep.name)} <span class="badge st ${esc(ep.status)}">${esc(ep.status)}</span></h3>${table(ep)}`
    + (faults.length ? `<h4>faults</h4>${faults.map((f) => `<p class="error">${esc(f.severity)} ${esc(f.code)}: ${esc(f.message)}</p>`).join("")}` : "");
}

function showObject(ref) {
  const [kind, name] = [ref.slice(0, ref.indexOf(":")), ref.slice(ref.indexOf(":") + 1)];
  const real = { epg: "endpoint_group", subnet: "subnet" }[kind] || kind;
  if (kind === "host") {
    const a = (state.agents || []).find((x) => x.name === name);
    $("details").innerHTML = `<h3>host ${esc(name)}</h3>${a ? table(a) : "<p class=hint>no agent of this name is known</p>"}`;
    return;
  }
  const tenantKey = real === "external_network" ? `/${name}` : `${state.tenant}/${name}`;
  const obj = state.objects[real] && state.objects[real].get(tenantKey);
  if (obj) $("details").innerHTML = `<h3>${esc(real.replace(/_/g, " "))} ${esc(name)}</h3>${table(obj)}`;
}

function search(text) {
  const q = text.trim().toLowerCase();
  state.found = "";
  if (!q) { $("search-result").textContent = ""; renderTopology(); return; }
  const eps = list("endpoint", state.tenant);
  const hits = eps.filter((ep) => ep.name.toLowerCase() === q || (ep.ip || []).includes(q));
  const more = hits.length ? hits : eps.filter((ep) => ep.name.toLowerCase().includes(q)
    || (ep.ip || []).some((a) => a.includes(q)));
  if (!more.length) { $("search-result").textContent = "no endpoint matches"; renderTopology(); return; }
  const ep = more[0];
  state.found = ep.name;
  state.expanded.add(state.groupBy === "host" ? `host:${ep.host || "(unbound)"}` : ep.epg ? `epg:${ep.epg}` : `subnet:${ep.subnet}`);
  $("search-result").textContent = more.length > 1 ? `${more.length} match; showing ${ep.name}` : `found ${ep.name}`;
  renderTopology();
  showEndpoint(key(ep));
  const el = document.getElementById(`ep-${key(ep)}`);
  if (el) el.scrollIntoView({ block: "center" });
}

$("search").addEventListener("keydown", (e) => { if (e.key === "Enter") search(e.target.value); });
$("search").addEventListener("search", (e) => search(e.target.value));
$("group-by").addEventListener("change", (e) => { state.groupBy = e.target.value; renderTopology(); });
// Expand every group, up to EXPAND_MAX endpoints drawn as chips: past that the drawing takes
// seconds (bench/console.py); search, or a click on a group, shows the rest.
const EXPAND_MAX = 2000;
$("expand-all").addEventListener("click", () => {
  state.collapsed.clear();
  const groups = new Map();
  for (const ep of list("endpoint", state.tenant)) {
    const id = state.groupBy === "host" ? `host:${ep.host || "(unbound)"}` : ep.epg ? `epg:${ep.epg}` : `subnet:${ep.subnet}`;
    groups.set(id, (groups.get(id) || 0) + 1);
  }
  let drawn = 0, left = 0;
  for (const [id, n] of [...groups].sort((a, b) => a[1] - b[1])) {
    if (drawn + n <= EXPAND_MAX) { state.expanded.add(id); drawn += n; } else left += 1;
  }
  $("search-result").textContent = left ? `${left} groups left collapsed (over ${EXPAND_MAX} endpoints): search or click one` : "";
  renderTopology();
});
$("collapse-all").addEventListener("click", () => {
  state.expanded.clear();
  for (const g of list("endpoint_group", state.tenant)) state.collapsed.add(`epg:${g.name}`);
  for (const ep of list("endpoint", state.tenant)) {
    state.collapsed.add(`host:${ep.host || "(unbound)"}`);
    if (!ep.epg) state.collapsed.add(`subnet:${ep.subnet}`);
  }
  renderTopology();
});

// ---- the connectivity matrix ---------------------------------------------------------------

async function loadMatrix() {
  if (!state.tenant) { state.matrix = null; return; }
  state.matrix = await api(`/v1/matrix?tenant=${encodeURIComponent(state.tenant)}`);
}

function entryText(e) {
  const what = e.protocol === "any" && !e.port ? "all" : `${e.protocol}${e.port ? "/" + e.port : ""}`;
  return `${e.action === "deny" ? "✕ " : ""}${what}${e.ethertype && e.ethertype !== "any" ? ` (${e.ethertype})` : ""}`;
}

function matrixTable(names, cells, family, prefix) {
  if (!names.length) return `<p class="hint">none</p>`;
  const at = new Map(cells.map((c) => [`${c.source}\u0000${c.destination}`, c]));
  let html = `<table class="matrix" data-family="${family}"><tr><th class="corner">from ↓ to →</th>${names.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>`;
  for (const a of names) {
    html += `<tr><th>${esc(a)}</th>`;
    for (const b of names) {
      const c = at.get(`${a}\u0000${b}`);
      const text = c.entries.length ? [...new Set(c.entries.map(entryText))].join(", ") : "deny";
      html += `<td class="cell ${c.verdict}" data-family="${family}" data-source="${esc(a)}" data-destination="${esc(b)}" id="cell-${prefix}-${esc(a)}-${esc(b)}" title="${esc(c.note)}">${esc(text)}</td>`;
    }
    html += "</tr>";
  }
  return html + "</table>";
}

function renderMatrix() {
  const m = state.matrix;
  if (!m) { $("matrix-epg").innerHTML = `<p class="hint">No tenant.</p>`; $("matrix-sg").innerHTML = ""; return; }
  $("matrix-epg").innerHTML = matrixTable(m.epgs, m.epg_cells, "epg", "epg");
  $("matrix-sg-title").hidden = !m.security_groups.length;
  $("matrix-sg").innerHTML = m.security_groups.length ? matrixTable(m.security_groups, m.sg_cells, "sg", "sg") : "";
}

function defaultProbe(cell) {
  const e = cell.entries.find((x) => x.action === "allow") || cell.entries[0];
  if (!e || e.protocol === "any") return "icmp";
  if (e.protocol === "tcp" || e.protocol === "udp") return `${e.protocol}/${String(e.port || "80").split("-")[0]}`;
  return e.protocol;
}

$("view-matrix").addEventListener("click", (event) => {
  const td = event.target.closest("td.cell");
  if (!td || !state.matrix) return;
  document.querySelectorAll("td.cell.on").forEach((x) => x.classList.remove("on"));
  td.classList.add("on");
  const family = td.dataset.family;
  const { source, destination } = td.dataset;
  const cells = family === "epg" ? state.matrix.epg_cells : state.matrix.sg_cells;
  const cell = cells.find((c) => c.source === source && c.destination === destination);
  const members = (g) => state.matrix.members[family === "epg" ? g : `sg:${g}`] || [];
  const from = members(source), to = members(destination);
  const options = (names, skip) => names.map((n) => `<option${n === skip ? "" : ""}>${esc(n)}</option>`).join("");
  const label = family === "epg" ? "endpoint group" : "security group";
  $("explain").innerHTML = `<h3>${esc(label)} ${esc(source)} → ${esc(destination)}</h3>`
    + `<p class="verdict ${cell.verdict}">${esc(cell.verdict)}</p>`
    + (cell.entries.length ? `<ul class="rules">${cell.entries.map((e) => `<li><b>${esc(entryText(e))}</b>: ${esc(e.by)}</li>`).join("")}</ul>` : "")
    + (cell.note ? `<p class="note">${esc(cell.note)}</p>` : "")
    + `<h4>Between two endpoints</h4>`
    + (from.length && to.length ? `<form id="explain-form"><label>from <select id="explain-from">${options(from)}</select></label>
      <label>to <select id="explain-to">${options(to)}</select></label>
      <label>probe <input id="explain-probe" size="9" value="${esc(defaultProbe(cell))}"></label>
      <button type="submit">explain</button></form><div id="explain-answer"></div>`
      : `<p class="hint">No endpoints in ${from.length ? destination : source}.</p>`);
  if (from.length && to.length) {
    const toSel = $("explain-to");
    if (source === destination && to.length > 1) toSel.selectedIndex = 1;
    $("explain-form").addEventListener("submit", (e) => { e.preventDefault(); explainPair(); });
    explainPair();
  }
});

// The probe as GET /v1/explain takes it: it names the family (tcp6/N, udp6/N, icmpv6) where the
// matrix's explain picks it from the endpoints, so a pair with no IPv4 address between them is
// asked in IPv6.
function dataplaneProbe(probe, from, to) {
  const v4 = (name) => ((state.objects.endpoint.get(`${state.tenant}/${name}`) || {}).ip || [])
    .some((a) => /^\d+\.\d+\.\d+\.\d+/.test(a));
  if (v4(from) && v4(to)) return probe;
  const m = /^(tcp|udp)\/(\d+)$/.exec(probe);
  return m ? `${m[1]}6/${m[2]}` : probe === "icmp" ? "icmpv6" : probe;
}

// The route is absent (an authority without dataplane explain): 404 with no field, or 405. A 404
// naming "from" or "to" is the route's own answer (no such endpoint) and is shown as such.
const noRoute = (e) => (e.status === 404 && !e.field) || e.status === 405;

function flowsTable(flows) {
  if (!flows || !flows.length) return "";
  return `<table class="flows"><tr><th>table</th><th>match</th><th>priority</th><th>from</th><th>actions</th></tr>`
    + flows.map((f) => `<tr><td>${esc(f.table)}</td><td>${esc(f.match || "*")}</td><td>${esc(f.priority ?? "")}</td>`
      + `<td>${esc(f.from)}</td><td>${esc((f.actions || []).join(","))}</td></tr>`).join("") + "</table>";
}

// A pair explained: from the dataplane (GET /v1/explain: the agents trace the probe through the
// flows they installed, hop by hop) when the authority has it, else from the intent.
async function explainPair() {
  const source = $("explain-from").value, destination = $("explain-to").value;
  const probe = $("explain-probe").value.trim();
  const answer = $("explain-answer");
  const head = (verdict) => `<p class="verdict ${esc(verdict)}">${esc(source)} → ${esc(destination)} ${esc(probe)}: <b>${esc(verdict)}</b></p>`;
  try {
    let x;
    try {
      const q = new URLSearchParams({ from: `${state.tenant}/${source}`, to: `${state.tenant}/${destination}`,
        probe: dataplaneProbe(probe, source, destination) });
      x = await api(`/v1/explain?${q}`);
    } catch (e) {
      if (!(e instanceof HttpError) || !noRoute(e)) throw e;
      x = null;
    }
    if (x && x.source === "dataplane") {
      answer.dataset.source = "dataplane";
      answer.innerHTML = head(x.verdict) + `<p class="by">decided by <b>${esc(x.by)}</b></p>`
        + `<ol class="hops">${(x.hops || []).map((h) => `<li>host <b>${esc(h.host)}</b>${h.renderer ? ` (${esc(h.renderer)})` : ""}: ${esc(h.outcome)}${flowsTable(h.flows)}</li>`).join("")}</ol>`
        + `<p class="note">From the dataplane: the probe's first packet traced through what the hosts installed (no packet sent).</p>`;
      return;
    }
    if (x) {  // the route answered from the intent: the dataplane could not be asked
      answer.dataset.source = "intent";
      answer.innerHTML = head(x.verdict)
        + `<ol class="reasons">${String(x.by || "").split("; ").map((r) => `<li>${esc(r)}</li>`).join("")}</ol>`
        + `<p class="note">From the intent (declared policy), not the dataplane: ${esc(x.reason || "the hosts could not be asked")}.</p>`;
      return;
    }
    const q = new URLSearchParams({ tenant: state.tenant, source, destination, probe });
    const m = await api(`/v1/matrix/explain?${q}`);
    answer.dataset.source = "intent";
    answer.innerHTML = head(m.verdict)
      + `<ol class="reasons">${m.reasons.map((r) => `<li>${esc(r)}</li>`).join("")}</ol>`
      + `<p class="note">From the intent (declared policy): layers that applied: ${esc(m.layers.join(", ") || "none")}. `
      + `Not a trace of the installed flows: this authority does not explain from the dataplane.</p>`;
  } catch (e) {
    answer.dataset.source = "";
    answer.innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

// ---- agents and faults ---------------------------------------------------------------------

const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
// how long ago, from the authority's clock as far as the page knows it (its responses' Date)
function ago(t) {
  const s = Math.max(0, Math.round(Date.now() / 1000 + state.clockSkew - t));
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

function renderAgents() {
  if (state.agents === null) {
    $("agents-note").textContent = state.globalError || "";
    for (const id of ["agents", "faults", "gateways"]) $(id).innerHTML = "";
    return;
  }
  $("agents-note").textContent = `authority at revision ${state.revision}`;
  const rows = state.agents.map((a) => {
    const c = a.counters || {};
    const rendered = a.rendered_revision ?? c.rendered_revision;
    // the highest revision of its tenants its flows reflect: below the authority's global revision
    // when other tenants changed since, so both are shown and the reader judges
    const behind = rendered === undefined || rendered === null ? "not reported"
      : `${rendered}${rendered >= state.revision ? " (current)" : ` (authority: ${state.revision})`}`;
    // rendered_at: when the agent last told a new rendered revision, i.e. its last reconcile that
    // changed what its flows reflect (an agent reports on change only; one that never reports,
    // like the reference agent, shows its last report of anything instead)
    return `<tr class="${a.connected ? "up" : "down"}"><td>${esc(a.name)}</td><td>${esc(a.tunnel_ip || a.address)}</td>`
      + `<td>${a.connected ? "connected" : "disconnected"} since ${esc(when(a.connected_since))}</td>`
      + `<td>${esc(behind)}</td><td>${esc(c.flows ?? "-")}</td><td>${esc((a.endpoints || []).length)}</td>`
      + `<td class="reconcile">${esc(a.rendered_at ? `${when(a.rendered_at)} (${ago(a.rendered_at)})` : `not reported; last report ${when(a.last_seen)}`)}</td>`
      + `<td>${esc((a.gateway_for || []).join(", "))}</td></tr>`;
  });
  $("agents").innerHTML = `<tr><th>host</th><th>address</th><th>connection</th><th>rendered revision</th><th>flows</th><th>endpoints</th><th title="when the agent last reported that its flows reflect a new revision">last reconcile</th><th>active gateway of</th></tr>`
    + (rows.join("") || `<tr><td colspan="8" class="hint">no agent has connected</td></tr>`);
  const active = activeGateways();
  const gws = list("router").filter((r) => r.external_gateway);
  $("gateways").innerHTML = `<tr><th>router</th><th>external network</th><th>candidates (in order)</th><th>active</th></tr>`
    + (gws.map((r) => `<tr><td>${esc(r.tenant)}/${esc(r.name)}</td><td>${esc(r.external_gateway.network)}</td>`
      + `<td>${esc((r.external_gateway.hosts || []).join(", "))}</td><td>${esc(active.get(`${r.tenant}/${r.name}`) || "none")}</td></tr>`).join("")
      || `<tr><td colspan="4" class="hint">no router has an external gateway</td></tr>`);
  const faults = [...state.faults].sort((p, q) => q.time - p.time);
  $("faults").innerHTML = `<tr><th>time</th><th>severity</th><th>agent</th><th>code</th><th>message</th><th>object</th></tr>`
    + (faults.map((f) => `<tr class="sev-${esc(f.severity)}"><td>${esc(when(f.time))}</td><td>${esc(f.severity)}</td><td>${esc(f.agent)}</td>`
      + `<td>${esc(f.code)}</td><td>${esc(f.message)}</td><td>${esc(f.uri || "")}</td></tr>`).join("")
      || `<tr><td colspan="6" class="hint">no faults</td></tr>`);
}

setInterval(() => { if (state.view === "agents" && state.live !== "off") scheduleGlobal(); }, 5000);

// ---- start ---------------------------------------------------------------------------------

async function start() {
  $("logout").hidden = !state.token;
  try {
    await loadAll();
  } catch (e) {
    if (e.status !== 401) status(e.message);
    return;
  }
  status("");
  showView(location.hash.slice(1));
  follow();
}

start();
