// penwarden's compliance console: a page over the HTTP API (docs/api.md). Everything it shows
// comes from the API with the signed-in key, so it sees exactly what that key's role and scope
// allow. The key is kept in this tab's sessionStorage, sent only in the Authorization header,
// and forgotten on sign-out or when the API refuses it. Data is written into the page as
// text, never parsed as HTML.
"use strict";

const KEY_ITEM = "penwarden.apiKey";
const VIEWS = ["overview", "violations", "cartridge", "lot", "pens"];
const PAGE_SIZE = 1000;
// Enough for any screen; a longer list says so and asks for a filter.
const MAX_VIOLATIONS = 10000;

const $ = (selector, root = document) => root.querySelector(selector);

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authorization() {
  return { Authorization: "Bearer " + sessionStorage.getItem(KEY_ITEM) };
}

async function call(method, body = {}) {
  const response = await fetch("/api/v1/" + method, {
    method: "POST",
    headers: { ...authorization(), "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  let answer;
  try {
    answer = await response.json();
  } catch {
    answer = { code: "UNKNOWN", message: response.statusText || "no answer" };
  }
  if (!response.ok) {
    const error = new ApiError(response.status, answer.code, answer.message);
    if (response.status === 401) refused(error);
    throw error;
  }
  return answer;
}

// Follows WatchViolations' server-sent events. EventSource cannot send an Authorization header,
// so the stream is read with fetch; after a broken connection it resumes from the last
// change's cursor, missing none. Resolves once the first connection is established, so that a
// list loaded afterwards leaves no gap before the first change.
function watchViolations(filters, onChange, onState, signal) {
  let cursor = "";
  let connected;
  const established = new Promise((resolve) => (connected = resolve));
  (async () => {
    while (!signal.aborted) {
      const query = new URLSearchParams();
      for (const [name, value] of Object.entries(filters)) if (value) query.set(name, value);
      if (cursor) query.set("cursor", cursor);
      try {
        const response = await fetch("/api/v1/ComplianceService/WatchViolations?" + query, {
          headers: authorization(),
          cache: "no-store",
          signal,
        });
        if (!response.ok) {
          const answer = await response.json().catch(() => ({}));
          const error = new ApiError(response.status, answer.code, answer.message || response.statusText);
          if (response.status === 401) return refused(error);
          // A filter outside the key's scope, or a bad one: asking again will not help.
          if ([400, 403, 404].includes(response.status)) {
            onState(false, describe(error));
            connected();
            return;
          }
          throw error;
        }
        onState(true, "");
        connected();
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = parseEvent(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (event.type === "violation") {
              cursor = event.id;
              onChange(JSON.parse(event.data));
            } else if (event.type === "error") {
              onState(false, event.data);
            }
          }
        }
        onState(false, "the stream ended; reconnecting");
      } catch (error) {
        if (signal.aborted) return;
        onState(false, error.message);
        connected();
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();
  return established;
}

function parseEvent(block) {
  const event = { type: "message", id: "", data: [] };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "id") event.id = value;
    else if (field === "data") event.data.push(value);
  }
  event.data = event.data.join("\n");
  return event;
}

// ---------------------------------------------------------------------------------------------
// Formatting and DOM helpers
// ---------------------------------------------------------------------------------------------

const int = (value) => Number(value || 0);

function time(ms) {
  const value = int(ms);
  if (!value) return "—";
  return new Date(value).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function percent(part, whole) {
  return whole ? (100 * part / whole).toFixed(1) + " %" : "—";
}

// "VERDICT_NON_COMPLIANT" → "non-compliant"
function enumName(value, prefix) {
  return String(value || "").replace(prefix, "").toLowerCase().replace(/_/g, "-") || "—";
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

// A cell aligned as a number, whatever its text ("100 %", "12.5").
const numeric = (text) => ({ numeric: String(text) });

function row(cells, attributes = {}) {
  const tr = document.createElement("tr");
  for (const [name, value] of Object.entries(attributes)) tr.dataset[name] = value;
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = document.createElement("td");
      td.append(cell);
      tr.append(td);
    } else if (typeof cell === "number") {
      tr.append(element("td", cell, "n"));
    } else if (cell && typeof cell === "object" && "numeric" in cell) {
      tr.append(element("td", cell.numeric, "n"));
    } else {
      tr.append(element("td", cell));
    }
  }
  return tr;
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [term, value] of pairs) {
    dl.append(element("dt", term), element("dd", value));
  }
}

function showError(id, error) {
  $(id).textContent = error ? describe(error) : "";
}

function describe(error) {
  if (error instanceof ApiError) {
    if (error.status === 404) return "Not found within what this key may see.";
    return error.message + (error.code ? " (" + error.code + ")" : "");
  }
  return "The console could not reach penwarden: " + error.message;
}

// A link that runs an action in the console instead of navigating.
function actionLink(text, action) {
  const link = element("a", text);
  link.href = "#";
  link.addEventListener("click", (event) => {
    event.preventDefault();
    action();
  });
  return link;
}

// ---------------------------------------------------------------------------------------------
// Signing in and out
// ---------------------------------------------------------------------------------------------

let watching = null; // the AbortController of the violation stream

function signedIn() {
  return sessionStorage.getItem(KEY_ITEM) !== null;
}

// The part of a key that names it (pwk_<id>_…), never the secret.
function keyId(token) {
  const parts = token.split("_");
  return parts.length >= 3 ? parts[1] : "?";
}

async function signIn(event) {
  event.preventDefault();
  const input = $("#api-key");
  const token = input.value.trim();
  input.value = "";
  sessionStorage.setItem(KEY_ITEM, token);
  try {
    // Any call checks the key; this one is also the overview's first answer.
    await call("ComplianceService/GetComplianceReport", {});
  } catch (error) {
    sessionStorage.removeItem(KEY_ITEM);
    $("#sign-in-error").textContent =
      error instanceof ApiError && error.status === 401 ? "This key was refused: " + error.message + "." : describe(error);
    return;
  }
  $("#sign-in-error").textContent = "";
  enter();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_ITEM);
  if (watching) watching.abort();
  watching = null;
  for (const view of VIEWS) $("#" + view).hidden = true;
  // Nothing the key could see stays in the page.
  for (const table of document.querySelectorAll("table tbody")) table.replaceChildren();
  for (const list of document.querySelectorAll("dl.facts, #overview-totals")) list.replaceChildren();
  for (const result of ["#cartridge-result", "#lot-result"]) $(result).hidden = true;
  for (const form of document.querySelectorAll("main form")) form.reset();
  for (const error of document.querySelectorAll(".error")) error.textContent = "";
  violations.clear();
  streamed.clear();
  $("#tabs").hidden = true;
  $("#signed-in").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message;
  $("#api-key").focus();
}

// The API refused the key while in use (revoked, expired): back to the sign-in form.
function refused(error) {
  signOut("penwarden refused the key: " + error.message + ". Sign in with a valid key.");
}

function enter() {
  $("#sign-in").hidden = true;
  $("#tabs").hidden = false;
  $("#signed-in").hidden = false;
  $("#key-id").textContent = keyId(sessionStorage.getItem(KEY_ITEM));
  loaded.clear();
  show(currentView());
}

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

const loaded = new Set();

function currentView() {
  const name = location.hash.replace(/^#/, "").split("?")[0];
  return VIEWS.includes(name) ? name : "overview";
}

function show(view) {
  if (!signedIn()) return;
  for (const name of VIEWS) $("#" + name).hidden = name !== view;
  for (const tab of document.querySelectorAll("#tabs a")) {
    tab.classList.toggle("current", tab.dataset.view === view);
  }
  if (!loaded.has(view)) {
    loaded.add(view);
    if (view === "overview") loadOverview();
    if (view === "violations") loadViolations();
    if (view === "pens") loadPens();
  }
}

function go(view) {
  if (location.hash !== "#" + view) location.hash = view;
  else show(view);
}

// --- Overview --------------------------------------------------------------------------------

function rate(report) {
  return percent(int(report.compliantSessions), int(report.compliantSessions) + int(report.nonCompliantSessions));
}

function violatedRules(report) {
  return (report.rules || [])
    .filter((rule) => int(rule.sessions) > 0)
    .map((rule) => rule.rule + " " + int(rule.sessions))
    .join(", ") || "none";
}

async function loadOverview() {
  showError("#overview-error", null);
  try {
    const [report, pens] = await Promise.all([
      call("ComplianceService/GetComplianceReport", {}),
      call("FleetService/ListPens", {}),
    ]);
    const totals = $("#overview-totals");
    totals.replaceChildren();
    for (const [label, value] of [
      ["Sessions", int(report.sessions)],
      ["Compliant", int(report.compliantSessions)],
      ["Non-compliant", int(report.nonCompliantSessions)],
      ["Incomplete", int(report.incompleteSessions)],
      ["Compliance rate", rate(report)],
      ["Cartridges", int(report.cartridges)],
      ["Pens", int(report.pens)],
    ]) {
      const card = element("div", null, "card");
      card.append(element("span", value, "value"), element("span", label, "label"));
      totals.append(card);
    }
    const rules = $("#overview-rules tbody");
    rules.replaceChildren(
      ...(report.rules || []).map((rule) =>
        row([rule.rule, rule.severity, int(rule.sessions), numeric(percent(int(rule.sessions), int(report.sessions)))], {
          rule: rule.rule,
        }),
      ),
    );
    await loadPlaces(pens.pens || []);
  } catch (error) {
    if (signedIn()) showError("#overview-error", error);
  }
}

// One report per chain and per clinic of the key's pens, a few at a time.
async function loadPlaces(pens) {
  const chains = new Map();
  for (const pen of pens) {
    if (!pen.chainId || !pen.clinicId) continue;
    if (!chains.has(pen.chainId)) chains.set(pen.chainId, new Set());
    chains.get(pen.chainId).add(pen.clinicId);
  }
  const places = [];
  for (const chain of [...chains.keys()].sort()) {
    places.push({ chain, clinic: "" });
    for (const clinic of [...chains.get(chain)].sort()) places.push({ chain, clinic });
  }
  const reports = new Array(places.length);
  let next = 0;
  const worker = async () => {
    while (next < places.length) {
      const i = next++;
      const { chain, clinic } = places[i];
      const request = clinic ? { clinicId: clinic } : { chainId: chain };
      // A clinic key may not ask for its chain's whole report: that row is left out.
      reports[i] = await call("ComplianceService/GetComplianceReport", request).catch((error) => {
        if (error.status === 401) throw error;
        return null;
      });
    }
  };
  await Promise.all(Array.from({ length: 6 }, worker));
  const body = $("#overview-places tbody");
  body.replaceChildren();
  places.forEach(({ chain, clinic }, i) => {
    const report = reports[i];
    if (!report) return;
    const tr = row(
      [
        chain,
        clinic || "all clinics",
        int(report.sessions),
        int(report.compliantSessions),
        int(report.nonCompliantSessions),
        int(report.incompleteSessions),
        numeric(rate(report)),
        violatedRules(report),
      ],
      { chain, clinic },
    );
    if (!clinic) tr.className = "chain";
    body.append(tr);
  });
}

// --- Violations ------------------------------------------------------------------------------

const violations = new Map(); // id → the violation as last seen
const streamed = new Set(); // ids a change arrived for: newer than any list's copy

function violationFilters() {
  const form = $("#violation-filters");
  return {
    rule: form.rule.value,
    chain_id: form.chain_id.value.trim(),
    clinic_id: form.clinic_id.value.trim(),
    pen_serial: form.pen_serial.value.trim(),
    include_retracted: form.include_retracted.checked,
  };
}

async function fillRuleChoices() {
  const select = $("#violation-filters").rule;
  if (select.options.length > 1) return;
  // The report names every rule, in the engine's order.
  const report = await call("ComplianceService/GetComplianceReport", {});
  for (const rule of report.rules || []) {
    const option = element("option", rule.rule);
    option.value = rule.rule;
    select.append(option);
  }
}

async function loadViolations() {
  if (watching) watching.abort();
  watching = new AbortController();
  const signal = watching.signal;
  violations.clear();
  streamed.clear();
  renderViolations();
  showError("#violations-error", null);
  const filters = violationFilters();
  try {
    await fillRuleChoices();
    // The stream first: every change after this moment arrives on it; the list holds the rest.
    await watchViolations(
      { rule: filters.rule, chain_id: filters.chain_id, clinic_id: filters.clinic_id, pen_serial: filters.pen_serial },
      (change) => {
        if (signal.aborted) return;
        const violation = change.violation;
        streamed.add(String(violation.id));
        if (int(violation.retractedUnixMs) && !filters.include_retracted) violations.delete(String(violation.id));
        else violations.set(String(violation.id), violation);
        renderViolations(String(violation.id));
      },
      (live, why) => {
        if (signal.aborted) return;
        const state = $("#live-state");
        state.textContent = live ? "live: new violations appear as they are recorded" : "not live: " + why;
        state.className = live ? "live-on" : "live-off";
      },
      signal,
    );
    let pageToken = "";
    let listed = 0;
    do {
      const page = await call("ComplianceService/ListViolations", {
        rule: filters.rule,
        chainId: filters.chain_id,
        clinicId: filters.clinic_id,
        penSerial: filters.pen_serial,
        includeRetracted: filters.include_retracted,
        pageSize: PAGE_SIZE,
        pageToken,
      });
      if (signal.aborted) return;
      for (const violation of page.violations || []) {
        // A change from the stream is newer than the list's copy.
        if (!streamed.has(String(violation.id))) violations.set(String(violation.id), violation);
      }
      listed += (page.violations || []).length;
      pageToken = page.nextPageToken || "";
    } while (pageToken && listed < MAX_VIOLATIONS);
    $("#violations-table").dataset.truncated = pageToken ? "true" : "false";
    renderViolations();
    $("#violations-table").dataset.loaded = "true";
  } catch (error) {
    if (signedIn() && !signal.aborted) showError("#violations-error", error);
  }
}

function renderViolations(fresh) {
  const body = $("#violations-table tbody");
  const sorted = [...violations.values()].sort((a, b) => int(b.id) - int(a.id));
  body.replaceChildren(
    ...sorted.map((v) => {
      const cartridge = v.cartridgeSerial
        ? actionLink(v.cartridgeSerial, () => lookUpCartridge({ gtin: v.cartridgeGtin, serial: v.cartridgeSerial }))
        : "—";
      if (cartridge instanceof Node) cartridge.title = "GTIN " + v.cartridgeGtin + ", serial " + v.cartridgeSerial;
      const tr = row(
        [
          int(v.id),
          v.rule,
          v.severity,
          v.chainId || "—",
          v.clinicId || "—",
          v.penSerial || "—",
          v.sessionId || "—",
          cartridge,
          time(v.deviceTimeUnixMs),
          time(v.detectedUnixMs),
          int(v.retractedUnixMs) ? "withdrawn: " + (v.retractionReason || "") + " — " + v.explanation : v.explanation,
        ],
        { violationId: String(v.id), chain: v.chainId || "", rule: v.rule },
      );
      tr.classList.add(v.severity || "minor");
      if (int(v.retractedUnixMs)) tr.classList.add("retracted");
      if (String(v.id) === fresh) tr.classList.add("fresh");
      return tr;
    }),
  );
  const truncated = $("#violations-table").dataset.truncated === "true";
  $("#violations-count").textContent =
    sorted.length + (sorted.length === 1 ? " violation" : " violations") + (truncated ? " (the first " + MAX_VIOLATIONS + "; narrow the filters to see the rest)" : "");
}

// --- Sessions (cartridge and lot) ------------------------------------------------------------

const SESSION_COLUMNS = ["Session", "Pen", "Chain", "Clinic", "Operator", "Area", "Cartridge", "Started", "Ended",
  "Strokes", "Max depth (mm)", "Verdict", "Violated rules"];

function sessionHeader(table) {
  const tr = document.createElement("tr");
  for (const name of SESSION_COLUMNS) tr.append(element("th", name));
  $("thead", table).replaceChildren(tr);
}

function sessionRow(s) {
  const tr = row(
    [
      s.sessionId,
      s.penSerial,
      s.chainId || "—",
      s.clinicId || "—",
      s.operatorId || "—",
      s.area || "—",
      actionLink(s.cartridgeSerial, () => lookUpCartridge({ gtin: s.cartridgeGtin, serial: s.cartridgeSerial })),
      time(s.startedUnixMs),
      int(s.endedUnixMs) ? time(s.endedUnixMs) : "not ended",
      int(s.strokes),
      Number(s.maxDepthMm || 0),
      enumName(s.verdict, "VERDICT_"),
      (s.violatedRules || []).join(", ") || "none",
    ],
    { sessionId: s.sessionId },
  );
  tr.classList.add(enumName(s.verdict, "VERDICT_"));
  return tr;
}

function lookUpCartridge(request) {
  const form = $("#cartridge-form");
  form.udi.value = request.udi || "";
  form.gtin.value = request.gtin || "";
  form.serial.value = request.serial || "";
  go("cartridge");
  findCartridge();
}

async function findCartridge(event) {
  if (event) event.preventDefault();
  const form = $("#cartridge-form");
  const udi = form.udi.value.trim();
  const request = udi ? { udi } : { gtin: form.gtin.value.trim(), serial: form.serial.value.trim() };
  showError("#cartridge-error", null);
  $("#cartridge-result").hidden = true;
  try {
    const cartridge = await call("ComplianceService/GetCartridge", request);
    const lot = actionLink(cartridge.lot || "—", () => traceLot(cartridge.gtin, cartridge.lot));
    facts($("#cartridge-facts"), [
      ["GTIN", cartridge.gtin],
      ["Serial", cartridge.serial],
      ["Lot", ""],
      ["Expiry", cartridge.expiry || "—"],
      ["Status", enumName(cartridge.status, "CARTRIDGE_STATUS_")],
      ["Sessions", (cartridge.sessions || []).length],
    ]);
    $("#cartridge-facts dd:nth-of-type(3)").append(lot);
    const table = $("#cartridge-sessions");
    sessionHeader(table);
    $("tbody", table).replaceChildren(...(cartridge.sessions || []).map(sessionRow));
    $("#cartridge-result").hidden = false;
  } catch (error) {
    if (signedIn()) showError("#cartridge-error", error);
  }
}

let lotPage = { gtin: "", lot: "", token: "" };

function traceLot(gtin, lot) {
  const form = $("#lot-form");
  form.gtin.value = gtin;
  form.lot.value = lot;
  go("lot");
  findLot();
}

async function findLot(event, more = false) {
  if (event) event.preventDefault();
  const form = $("#lot-form");
  if (!more) lotPage = { gtin: form.gtin.value.trim(), lot: form.lot.value.trim(), token: "" };
  showError("#lot-error", null);
  try {
    const trace = await call("ComplianceService/TraceLot", {
      gtin: lotPage.gtin,
      lot: lotPage.lot,
      pageSize: 100,
      pageToken: lotPage.token,
    });
    facts($("#lot-facts"), [
      ["GTIN", trace.gtin],
      ["Lot", trace.lot],
      ["Registered", trace.registered ? "yes, by " + (trace.manufacturerId || "—") : "no: its cartridges are unverified"],
      ["Expiry", trace.expiry || "—"],
      ["Recall", int(trace.recalledUnixMs) ? "recalled " + time(trace.recalledUnixMs) + ": " + (trace.recallReason || "") : "not recalled"],
      ["Sessions", int(trace.totalSessions)],
      ["Clinics", (trace.clinics || []).length],
    ]);
    $("#lot-clinics tbody").replaceChildren(
      ...(trace.clinics || []).map((c) =>
        row([c.chainId || "—", c.clinicId || "—", int(c.sessions), int(c.cartridges), int(c.pens),
          time(c.firstStartedUnixMs), time(c.lastStartedUnixMs)], { clinic: c.clinicId || "" }),
      ),
    );
    const table = $("#lot-sessions");
    sessionHeader(table);
    const rows = (trace.sessions || []).map(sessionRow);
    if (more) $("tbody", table).append(...rows);
    else $("tbody", table).replaceChildren(...rows);
    lotPage.token = trace.nextPageToken || "";
    $("#lot-more").hidden = !lotPage.token;
    $("#lot-result").hidden = false;
  } catch (error) {
    if (signedIn()) showError("#lot-error", error);
  }
}

// --- Pens ------------------------------------------------------------------------------------

async function loadPens() {
  showError("#pens-error", null);
  try {
    const answer = await call("FleetService/ListPens", {});
    const pens = (answer.pens || []).sort((a, b) => a.penSerial.localeCompare(b.penSerial));
    $("#pens-table tbody").replaceChildren(
      ...pens.map((pen) => {
        const ready = element("span");
        ready.append(actionLink("check", () => checkReady(pen.penSerial, ready)));
        const tr = row(
          [
            pen.penSerial,
            pen.chainId || "—",
            pen.clinicId || "not placed",
            pen.model || "—",
            pen.firmware || "—",
            pen.online ? "online" : "offline",
            time(pen.lastSeenUnixMs),
            numeric(pen.batteryPct === undefined ? "—" : Number(pen.batteryPct).toFixed(0) + " %"),
            numeric(Number(pen.motorHours || 0).toFixed(1)),
            pen.serviceDue ? "due: " + pen.serviceDue : "ok",
            ready,
          ],
          { pen: pen.penSerial, online: pen.online ? "true" : "false" },
        );
        if (pen.serviceDue) tr.classList.add("service-due");
        return tr;
      }),
    );
  } catch (error) {
    if (signedIn()) showError("#pens-error", error);
  }
}

async function checkReady(pen, cell) {
  cell.textContent = "asking…";
  try {
    const sterility = await call("ComplianceService/GetPenSterility", { penSerial: pen });
    cell.textContent = sterility.readyToTreat ? "ready" : "not ready: " + (sterility.reasons || []).join("; ");
    cell.className = sterility.readyToTreat ? "ready" : "not-ready";
  } catch (error) {
    cell.textContent = describe(error);
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut());
  $("#violation-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadViolations();
  });
  $("#cartridge-form").addEventListener("submit", findCartridge);
  $("#lot-form").addEventListener("submit", findLot);
  $("#lot-more").addEventListener("click", () => findLot(null, true));
  $("#overview-refresh").addEventListener("click", loadOverview);
  $("#pens-refresh").addEventListener("click", loadPens);
  window.addEventListener("hashchange", () => show(currentView()));
  if (signedIn()) enter();
  else $("#api-key").focus();
});
