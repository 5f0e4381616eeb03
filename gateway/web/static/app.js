// The status page: polls /api/state and redraws; every value goes in as text, never as HTML.
"use strict";

const POLL_MS = 1500;
let busy = false;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = document.createElement("td");
      td.appendChild(cell);
      tr.appendChild(td);
    } else {
      tr.appendChild(el("td", cell === null || cell === undefined ? "–" : cell));
    }
  }
  return tr;
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function since(ts, now) {
  return ts ? ago(Math.max(0, now - ts)) : "–";
}

function show(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = !text;
}

function fmtValue(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3).replace(/0+$/, "").replace(/\.$/, "");
  return v === null ? "null" : String(v);
}

async function act(action, key) {
  try {
    const answer = await fetch(`/api/alarms/${action}`, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", "X-Gateway": "1" },
      body: JSON.stringify({ key: key }),
    });
    const said = await answer.json();
    if (answer.ok) show(`${key}: ${(said.transitions || []).join(", ") || "nothing to do"}`, false);
    else show(`${key}: ${said.error}`, true);
  } catch (err) {
    show(`${key}: ${err}`, true);
  }
  refresh();
}

function alarmRows(state, now) {
  const alarms = state.observed.alarms.list || [];
  document.getElementById("alarm-count").textContent = `(${alarms.length} active)`;
  return alarms.map((a) => {
    const buttons = document.createElement("span");
    if (state.can.acknowledge && String(a.state).endsWith("_unack")) {
      const b = el("button", "Acknowledge");
      b.dataset.action = "acknowledge";
      b.addEventListener("click", () => act("acknowledge", a.key));
      buttons.appendChild(b);
    }
    if (state.can.acknowledge && a.state === "latched") {
      const b = el("button", "Reset");
      b.dataset.action = "reset";
      b.addEventListener("click", () => act("reset", a.key));
      buttons.appendChild(b);
    }
    const tr = row([a.key, el("span", a.state, a.state), a.severity, a.message, since(a.activated_at, now),
      a.acknowledged_by, buttons]);
    tr.dataset.alarm = a.key;
    return tr;
  });
}

function deviceRows(state, now) {
  const byDevice = {};
  for (const v of state.values) (byDevice[v.device] = byDevice[v.device] || []).push(v);
  return state.observed.devices.map((d) => {
    const values = document.createElement("span");
    for (const v of byDevice[d.id] || []) {
      const span = el("span", `${v.point} `, "value" + (v.quality === "good" ? "" : " bad"));
      const val = el("b", fmtValue(v.value));
      val.dataset.point = `${d.id}.${v.point}`;
      span.appendChild(val);
      if (v.unit) span.appendChild(el("span", v.unit, "unit"));
      values.appendChild(span);
    }
    const interval = d.interval_s === null ? "streamed" : `${d.actual_interval_s} / ${d.interval_s}`;
    const tr = row([d.id, el("span", d.state, d.state), d.bus, d.polls, d.failures, interval,
      ago(d.last_ok_age_s), values]);
    tr.dataset.device = d.id;
    return tr;
  });
}

function busRows(state) {
  return state.observed.buses.map((b) => row([b.id, b.driver, b.devices.join(", "), b.transactions,
    b.utilisation === null ? "–" : `${(b.utilisation * 100).toFixed(1)} %`]));
}

function outboxRows(state) {
  return Object.entries(state.observed.outbox).map(([cls, o]) => row([cls, o.depth,
    o.oldest_age_s === null ? "–" : ago(o.oldest_age_s)]));
}

function uplinkRows(state) {
  return state.observed.uplinks.map((u) => row([u.name, el("span", u.state, u.state), u.broker, u.delivered,
    u.delivered_per_s, u.backlog]));
}

function cameras(state) {
  const box = document.getElementById("cameras");
  for (const cam of state.observed.cameras) {
    let fig = box.querySelector(`figure[data-camera="${CSS.escape(cam.id)}"]`);
    if (!fig) {
      fig = el("figure");
      fig.dataset.camera = cam.id;
      const img = el("img");
      img.alt = `camera ${cam.id}`;
      img.addEventListener("error", () => { img.removeAttribute("src"); });
      fig.append(img, el("figcaption"));
      box.appendChild(fig);
    }
    const faces = state.can.faces ? "faces shown" : "faces blurred";
    fig.querySelector("figcaption").textContent =
      `${cam.id}: ${cam.state}, ${cam.fps === null ? "–" : cam.fps} fps, ${faces}`;
    fig.querySelector("img").src = `/api/cameras/${encodeURIComponent(cam.id)}/frame.jpg?t=${Date.now()}`;
  }
}

function render(state) {
  const o = state.observed;
  const now = o.ts;
  document.getElementById("site").textContent = o.site;
  document.getElementById("summary").textContent =
    `version ${o.version}, up ${ago(o.uptime_s).replace(" ago", "")}, clock ${o.clock_synced ? "synchronised" : "not synchronised"}`;
  document.getElementById("who").textContent = state.login
    ? `logged in as ${state.user} (${state.roles.join(", ")})`
    : "read-only (no users file: nobody can log in to acknowledge)";
  fill("alarms", alarmRows(state, now));
  fill("devices", deviceRows(state, now));
  fill("buses", busRows(state));
  fill("outbox", outboxRows(state));
  fill("uplinks", uplinkRows(state));
  cameras(state);
}

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const answer = await fetch("/api/state", { credentials: "same-origin", cache: "no-store" });
    if (!answer.ok) {
      const said = await answer.json().catch(() => ({ error: answer.statusText }));
      show(`the gateway says: ${said.error}`, true);
    } else {
      render(await answer.json());
      document.body.dataset.updated = String(Date.now());
    }
  } catch (err) {
    show(`the gateway does not answer: ${err}`, true);
  } finally {
    busy = false;
  }
}

refresh();
setInterval(refresh, POLL_MS);
