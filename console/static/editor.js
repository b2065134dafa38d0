// The step editor. The flow's JSON document is the source of truth: every form below is built
// from the flow JSON Schema (so a new step kind gets its form without new code here), every
// change is sent to the server's check (the same validation `deploy` applies) and its problems
// are shown on the step and field they name. "Save" stores a new version when valid to save.
"use strict";

const page = document.getElementById("editor");
const schema = JSON.parse(document.getElementById("flow-schema").textContent);
const mergeTags = JSON.parse(document.getElementById("merge-tags").textContent);
let flow = JSON.parse(document.getElementById("flow-document").textContent);
const defs = schema.$defs;
const kinds = schema.properties.steps.items.discriminator.mapping; // type -> "#/$defs/X"
const LONG_TEXT = new Set(["html", "text", "agenda", "message", "body", "description"]);
const STEP_REFERENCES = new Set(["next", "start", "email_step"]);
let lastText = null; // the text field a merge tag goes into
let fields = 0; // element ids: the same field name recurs in every step

function resolve(s) {
  while (s && s.$ref) s = defs[s.$ref.split("/").pop()];
  return s || {};
}

// {anyOf: [X, {type: "null"}]} -> [X, true]; the property's own title, description and default
// stay with it (a $ref's title is a class name).
function unwrap(s) {
  const own = { title: s.title, description: s.description, default: s.default };
  if (s.anyOf) {
    const others = s.anyOf.filter((o) => o.type !== "null");
    if (others.length === 1) return [{ ...resolve(others[0]), ...own, description: s.description || resolve(others[0]).description }, true];
    return [{ ...s, ...own }, false];
  }
  const inner = resolve(s);
  return [{ ...inner, ...own, description: s.description || inner.description }, false];
}

function humane(key) {
  return key.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// A new value for a schema: its default, or what its required parts need.
function blank(s) {
  const [inner, nullable] = unwrap(s);
  // (callers pass default: undefined for "the type's blank, not its default")
  if (s.default !== undefined) return structuredClone(s.default);
  if (nullable) return null;
  if (inner.const !== undefined) return inner.const;
  if (inner.type === "object") {
    const value = {};
    for (const key of inner.required || []) value[key] = blank(inner.properties[key]);
    return value;
  }
  if (inner.type === "array") return [];
  if (inner.type === "boolean") return false;
  if (inner.enum) return inner.enum[0];
  return inner.type === "string" ? "" : null;
}

function stepIds() {
  return flow.steps.map((step) => step.id).filter(Boolean);
}

function uniqueId(kind) {
  let n = 1;
  while (stepIds().includes(`${kind.replace(/_/g, "-")}-${n}`)) n += 1;
  return `${kind.replace(/_/g, "-")}-${n}`;
}

// --- fields --------------------------------------------------------------------------------

function setValue(holder, key, value) {
  if (value === undefined) delete holder[key];
  else holder[key] = value;
  changed();
}

function scalarInput(holder, key, s, nullable, path) {
  const value = holder[key];
  const id = `f${fields}`;
  if (s.enum || s.const !== undefined) {
    const options = s.enum || [s.const];
    const select = el("select", { id, name: path, onchange: (e) => setValue(holder, key, e.target.value === "" ? undefined : e.target.value) });
    if (nullable || !s.mandatory) select.append(el("option", { value: "" }, "—"));
    for (const option of options) select.append(el("option", { value: option, selected: option === (value ?? s.default) }, String(option)));
    return select;
  }
  if (s.type === "boolean") {
    return el("input", { id, name: path, type: "checkbox", checked: (value ?? s.default) === true, onchange: (e) => setValue(holder, key, e.target.checked) });
  }
  if (s.type === "integer" || s.type === "number") {
    return el("input", {
      id, name: path, type: "number", value: value ?? "",
      oninput: (e) => setValue(holder, key, e.target.value === "" ? undefined : Number(e.target.value)),
    });
  }
  if (s.type === "string" && s.format === "date-time") {
    return el("input", {
      id, name: path, type: "datetime-local", value: value ? String(value).slice(0, 16) : "",
      oninput: (e) => setValue(holder, key, e.target.value || undefined),
    });
  }
  if (s.type === "string") {
    const long = LONG_TEXT.has(key) || (s.maxLength || 0) > 1000;
    const input = el(long ? "textarea" : "input", {
      id, name: path, list: STEP_REFERENCES.has(key) ? "step-ids" : undefined,
      oninput: (e) => setValue(holder, key, e.target.value === "" && nullable ? undefined : e.target.value),
      onfocus: (e) => { lastText = e.target; },
    });
    input.value = value ?? "";
    return input;
  }
  // Several types at once (a condition's value): JSON when it parses as JSON, else text.
  const input = el("input", {
    id, name: path, value: value === undefined || value === null ? "" : typeof value === "string" ? value : JSON.stringify(value),
    oninput: (e) => {
      const text = e.target.value;
      let parsed = text;
      try { parsed = JSON.parse(text); } catch { /* text stays text */ }
      setValue(holder, key, text === "" ? undefined : parsed);
    },
  });
  return input;
}

function field(holder, key, propertySchema, path, required) {
  const [s, nullable] = unwrap(propertySchema);
  s.mandatory = required;
  const title = (s.title || humane(key)) + (required ? " *" : "");
  const box = el("div", { class: "field", "data-field": path });
  fields += 1;
  if (s.type === "object" && s.properties) {
    const set = el("fieldset", { "data-field": path }, el("legend", {}, title));
    if (holder[key] === undefined || holder[key] === null) {
      set.append(el("button", { type: "button", class: "secondary", onclick: () => { holder[key] = blank({ ...s, default: undefined, anyOf: undefined }); changed(true); } }, `Set ${title.toLowerCase()}`));
    } else {
      if (nullable || !required) set.append(el("button", { type: "button", class: "secondary", onclick: () => { delete holder[key]; changed(true); } }, "Remove"));
      objectFields(set, holder[key], s, path);
    }
    box.append(set);
    return box;
  }
  if (s.type === "array") {
    const items = unwrap(s.items || {})[0];
    box.append(el("label", { for: `f${fields}` }, title));
    if (items.type === "object" && items.properties) {
      const list = holder[key] || (holder[key] = []);
      list.forEach((item, index) => {
        const set = el("fieldset", { "data-field": `${path}.${index}` }, el("legend", {}, `${items.title || humane(key)} ${index + 1}`));
        set.append(el("button", { type: "button", class: "secondary", onclick: () => { list.splice(index, 1); changed(true); } }, "Remove"));
        objectFields(set, item, items, `${path}.${index}`);
        box.append(set);
      });
      box.append(el("button", { type: "button", class: "secondary", onclick: () => { list.push(blank({ ...items, default: undefined })); changed(true); } }, `Add ${(items.title || "item").toLowerCase()}`));
      return box;
    }
    const numbers = items.type === "integer" || items.type === "number";
    const input = el("input", {
      id: `f${fields}`, name: path, value: (holder[key] || []).join(", "), placeholder: "separated by commas",
      oninput: (e) => {
        const parts = e.target.value.split(",").map((p) => p.trim()).filter(Boolean);
        setValue(holder, key, numbers ? parts.map(Number) : parts);
      },
    });
    box.append(input);
    return box;
  }
  box.append(el("label", { for: `f${fields}` }, title), scalarInput(holder, key, s, nullable, path));
  if (s.description) box.append(el("div", { class: "hint" }, s.description));
  return box;
}

function objectFields(container, holder, s, path) {
  const required = new Set(s.required || []);
  if (s.properties.next && !s.properties.type) {
    // a branch: a new step can go on it
    container.append(insertTool(holder, "on this branch"));
  }
  for (const [key, propertySchema] of Object.entries(s.properties)) {
    if (key === "type") continue;
    container.append(field(holder, key, propertySchema, path ? `${path}.${key}` : key, required.has(key)));
  }
}

// --- steps ---------------------------------------------------------------------------------

function insertTool(holder, where) {
  const select = el("select", { "aria-label": `kind of the new step ${where}` }, el("option", { value: "" }, `Add a step ${where}…`));
  for (const kind of Object.keys(kinds)) select.append(el("option", { value: kind }, humane(kind)));
  select.addEventListener("change", () => {
    if (select.value) insertStep(select.value, holder);
  });
  return select;
}

function insertStep(kind, before) {
  const stepSchema = resolve({ $ref: kinds[kind] });
  const step = blank({ ...stepSchema });
  step.id = uniqueId(kind);
  step.type = kind;
  const oldNext = before ? before.next : undefined;
  if ("next" in stepSchema.properties && oldNext) step.next = oldNext;
  if (before) before.next = step.id; // reconnected: before -> new step -> what came next
  const at = before && flow.steps.includes(before) ? flow.steps.indexOf(before) + 1 : flow.steps.length;
  flow.steps.splice(at, 0, step);
  changed(true);
  document.querySelector(`[data-step="${CSS.escape(step.id)}"]`)?.scrollIntoView({ block: "center" });
}

function stepCard(step, index) {
  const stepSchema = resolve({ $ref: kinds[step.type] });
  const card = el("section", { class: "card step", "data-step": step.id || `#${index}`, "data-index": index });
  const remove = el("button", { type: "button", class: "secondary remove", title: "remove this step", onclick: () => { flow.steps.splice(index, 1); changed(true); } }, "Remove");
  // The list's order is the document's: moving a step changes no connection (start, next).
  const move = (by) => el("button", {
    type: "button", class: `secondary move-${by < 0 ? "up" : "down"}`, title: `move this step ${by < 0 ? "up" : "down"} the list`,
    disabled: index + by < 0 || index + by >= flow.steps.length,
    onclick: () => { flow.steps.splice(index + by, 0, ...flow.steps.splice(index, 1)); changed(true); },
  }, by < 0 ? "↑" : "↓");
  card.append(el("header", {}, el("b", {}, step.name || step.id || `step ${index + 1}`), el("span", { class: "kind" }, humane(step.type || "?")), el("span", { class: "tools" }, move(-1), move(1), "next" in (stepSchema.properties || {}) ? insertTool(step, "after") : "", remove)));
  card.append(el("ul", { class: "problems step-problems" }));
  if (!stepSchema.properties) {
    card.append(el("p", { class: "field-error" }, `unknown step type ${step.type}`));
    return card;
  }
  objectFields(card, step, stepSchema, "");
  return card;
}

function settingsCard() {
  const card = el("section", { class: "card", id: "settings", "data-step": "" }, el("h2", { style: "margin-top:0" }, "Flow settings"));
  card.append(el("ul", { class: "problems step-problems" }));
  const settings = { ...schema, properties: { ...schema.properties } };
  delete settings.properties.steps;
  objectFields(card, flow, settings, "");
  return card;
}

function renderAll() {
  const steps = document.getElementById("steps");
  document.getElementById("settings-holder").replaceChildren(settingsCard());
  steps.replaceChildren(...flow.steps.map(stepCard));
  steps.append(insertTool(null, "at the end"));
  document.getElementById("step-ids").replaceChildren(...stepIds().map((id) => el("option", { value: id })));
}

// --- checking and saving -------------------------------------------------------------------

let timer = null;
let latest = 0;

function changed(structure = false) {
  if (structure) renderAll();
  document.getElementById("step-ids").replaceChildren(...stepIds().map((id) => el("option", { value: id })));
  clearTimeout(timer);
  timer = setTimeout(check, 250);
}

function post(url) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": page.dataset.csrf },
    body: JSON.stringify(flow),
  });
}

function cardFor(stepId) {
  if (!stepId) return document.getElementById("settings");
  const match = stepId.match(/^#(\d+)$/);
  if (match) return document.querySelector(`[data-index="${match[1]}"]`);
  return [...document.querySelectorAll("#steps .step")].find((card, i) => flow.steps[i] && flow.steps[i].id === stepId);
}

function show(answer) {
  document.querySelectorAll(".field-error.live").forEach((node) => node.remove());
  document.querySelectorAll(".invalid").forEach((node) => node.classList.remove("invalid"));
  document.querySelectorAll(".step-problems").forEach((node) => node.replaceChildren());
  const summary = document.getElementById("problems");
  summary.replaceChildren();
  for (const problem of answer.problems || []) {
    const card = cardFor(problem.step);
    let target = null;
    if (card) {
      let path = problem.field;
      while (path && !target) {
        target = card.querySelector(`[data-field="${CSS.escape(path)}"]`);
        path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
      }
      if (problem.level === "error") card.classList.add("invalid");
    }
    const text = `${problem.field ? problem.field + ": " : ""}${problem.message}`;
    if (target) {
      if (problem.level === "error") target.classList.add("invalid");
      target.append(el("div", { class: `field-error live ${problem.level}` }, problem.message));
    } else if (card) {
      card.querySelector(".step-problems").append(el("li", { class: problem.level }, text));
    }
    summary.append(el("li", { class: problem.level }, el("a", { href: "#", onclick: (e) => { e.preventDefault(); (card || document.body).scrollIntoView({ block: "center" }); } }, `${problem.step || "flow"}: ${text}`)));
  }
  for (const [stepId, length] of Object.entries(answer.sms || {})) {
    const card = cardFor(stepId);
    const box = card && card.querySelector('[data-field="text"]');
    if (box) {
      let note = box.querySelector(".sms-length");
      if (!note) box.append((note = el("div", { class: "sms-length" })));
      note.textContent = length;
    }
  }
  const verdict = document.getElementById("verdict");
  verdict.textContent = !answer.can_save ? "Not valid to save" : answer.can_run ? "Valid, ready to run" : "Valid to save, not ready to run";
  verdict.className = answer.can_save ? (answer.can_run ? "ok" : "not_ready") : "error";
  document.getElementById("save").disabled = !answer.can_save;
}

async function check() {
  const mine = ++latest;
  const response = await post(page.dataset.check);
  const answer = await response.json();
  if (mine === latest) show(response.ok ? answer : { problems: [{ level: "error", step: null, field: "", message: answer.error }] });
}

async function save() {
  const response = await post(page.dataset.save);
  const answer = await response.json();
  const result = document.getElementById("saved");
  if (response.ok) {
    result.replaceChildren(answer.created ? `Saved as version ${answer.version}. ` : `Version ${answer.version} is already this document. `, el("a", { href: page.dataset.flow }, "Back to the flow"));
    result.className = "flash";
  } else {
    result.textContent = answer.error;
    result.className = "flash error";
  }
  if (answer.problems) show(answer);
}

document.getElementById("save").addEventListener("click", save);
document.getElementById("download").addEventListener("click", () => {
  const blob = new Blob([JSON.stringify(flow, null, 2) + "\n"], { type: "application/json" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `${flow.id || "flow"}.json` });
  link.click();
  URL.revokeObjectURL(link.href);
});
document.getElementById("upload").addEventListener("change", async (event) => {
  const [file] = event.target.files;
  if (!file) return;
  try {
    flow = JSON.parse(await file.text());
  } catch (error) {
    show({ problems: [{ level: "error", step: null, field: "", message: `${file.name} is not JSON: ${error.message}` }] });
    return;
  }
  if (!Array.isArray(flow.steps)) flow.steps = [];
  changed(true);
});
const tagList = document.getElementById("merge-tag-list");
for (const tag of mergeTags) {
  tagList.append(el("li", {}, el("a", { href: "#", onclick: (e) => {
    e.preventDefault();
    if (!lastText) return;
    const at = lastText.selectionStart ?? lastText.value.length;
    lastText.setRangeText(`[[${tag}]]`, at, lastText.selectionEnd ?? at, "end");
    lastText.dispatchEvent(new Event("input"));
    lastText.focus();
  } }, `[[${tag}]]`)));
}
// --- merge tags offered while typing "[[" -------------------------------------------------

const suggestions = el("ul", { id: "tag-suggestions", class: "suggestions", role: "listbox", hidden: true });
document.body.append(suggestions);
let suggesting = null; // {input, start, chosen}

function typedTag(input) {
  if (typeof input.selectionStart !== "number" || input.selectionStart !== input.selectionEnd) return null;
  const before = input.value.slice(0, input.selectionStart);
  const found = before.match(/\[\[([\w.:]*)$/);
  return found ? { start: before.length - found[0].length, typed: found[1].toLowerCase() } : null;
}

function closeSuggestions() {
  suggesting = null;
  suggestions.hidden = true;
}

function choose(tag) {
  const { input, start } = suggesting;
  input.setRangeText(`[[${tag}]]`, start, input.selectionStart, "end");
  closeSuggestions();
  input.dispatchEvent(new Event("input"));
  input.focus();
}

function offerTags(input) {
  const typed = typedTag(input);
  const tags = typed ? mergeTags.filter((tag) => tag.toLowerCase().includes(typed.typed)) : [];
  if (!typed || !tags.length) return closeSuggestions();
  tags.sort((a, b) => a.toLowerCase().startsWith(typed.typed) ? (b.toLowerCase().startsWith(typed.typed) ? 0 : -1) : 1);
  suggesting = { input, start: typed.start, chosen: 0, tags };
  suggestions.replaceChildren(...tags.map((tag, i) => el("li", {
    role: "option", "data-tag": tag, "aria-selected": i === 0 ? "true" : "false",
    onmousedown: (e) => { e.preventDefault(); choose(tag); },
  }, `[[${tag}]]`)));
  const box = input.getBoundingClientRect();
  suggestions.style.left = `${box.left + window.scrollX}px`;
  suggestions.style.top = `${box.bottom + window.scrollY}px`;
  suggestions.hidden = false;
}

function isText(node) {
  return page.contains(node) && (node.tagName === "TEXTAREA" || (node.tagName === "INPUT" && node.type === "text" && !node.list));
}

document.addEventListener("input", (event) => {
  if (isText(event.target) && event.isTrusted) offerTags(event.target);
});
document.addEventListener("keydown", (event) => {
  if (!suggesting || event.target !== suggesting.input) return;
  const count = suggesting.tags.length;
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    suggesting.chosen = (suggesting.chosen + (event.key === "ArrowDown" ? 1 : count - 1)) % count;
    [...suggestions.children].forEach((item, i) => item.setAttribute("aria-selected", String(i === suggesting.chosen)));
    suggestions.children[suggesting.chosen].scrollIntoView({ block: "nearest" });
  } else if (event.key === "Enter" || event.key === "Tab") {
    choose(suggesting.tags[suggesting.chosen]);
  } else if (event.key === "Escape") {
    closeSuggestions();
  } else {
    return;
  }
  event.preventDefault();
});
document.addEventListener("focusout", (event) => {
  if (suggesting && event.target === suggesting.input) closeSuggestions();
});

renderAll();
check();
