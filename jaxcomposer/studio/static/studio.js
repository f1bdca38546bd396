// The studio page: fills the form from /api/models, posts a generation, polls the job and
// shows its samples. Every text from the server (model folder names, MIDI track names,
// messages) is set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let catalogue = null;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function factsTable(table, facts) {
  table.replaceChildren();
  for (const [k, v] of Object.entries(facts)) {
    const row = el("tr");
    row.append(el("th", {}, k), el("td", {}, v));
    table.append(row);
  }
}

function showModel() {
  const model = catalogue.models.find((m) => m.id === $("model").value);
  if (!model) return;
  factsTable($("facts"), model.facts);
  const d = model.defaults;
  // Style: key+style models only; "" lets the sampler draw one per sample.
  const style = $("style");
  style.replaceChildren(el("option", { value: "" }, "(drawn for each sample)"));
  for (const name of model.styles) style.append(el("option", { value: name }, name));
  $("style-field").hidden = model.styles.length === 0;
  for (const name of ["key", "scale", "style", "meter", "temperature", "top_p", "bars", "seed",
                      "num_samples", "particles"]) {
    $(name).value = d[name];
  }
}

async function loadModels() {
  const answer = await fetch("/api/models");
  catalogue = await answer.json();
  const select = $("model");
  select.replaceChildren();
  for (const m of catalogue.models) select.append(el("option", { value: m.id }, m.name));
  select.addEventListener("change", showModel);
  for (const [name, [low, high]] of Object.entries(catalogue.limits)) {
    const input = $(name);
    if (input) { input.min = low; input.max = high; }
  }
  showModel();
}

// A result chosen as the primer ("Regenerate bars of this sample"): its MIDI, fetched from the
// studio, is sent as the primer upload (the same checks as a file from the disk).
let resultPrimer = null;

function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function useAsPrimer(sample, midiUrl) {
  resultPrimer = { name: `${sample.name}.mid`, url: midiUrl };
  $("primer").value = "";
  $("result-primer").textContent = `Primer: ${sample.name} of the last result ` +
    "(type the bars to regenerate, then Generate).";
  $("infill").focus();
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const bytes = new Uint8Array(reader.result);
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) {
        binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
      }
      resolve(btoa(binary));
    };
    reader.onerror = () => reject(new Error("cannot read the file"));
    reader.readAsArrayBuffer(file);
  });
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("progress").hidden = !busy;
}

function progressText(job) {
  if (job.state === "queued") return `queued (${job.ahead} request(s) ahead)`;
  if (job.stage === "sampling") return "sampling the notes...";
  if (job.stage === "rendering") return `rendering sample ${job.done + 1} of ${job.total}...`;
  return job.stage + "...";
}

function progressValue(job) {
  if (job.state === "queued") return 0;
  if (job.stage === "sampling") return 0.1;
  if (job.stage === "sampled") return 0.3;
  if (job.stage === "rendering" && job.total) return 0.3 + 0.7 * (job.done / job.total);
  return job.state === "done" ? 1 : 0.95;
}

// Pitch against beats: one bar per note (right hand >= C4 blue, left hand orange, given notes
// red, more opaque when louder), grey bar lines, C of each octave labelled, black-key rows shaded.
function pianoRoll(roll) {
  const notes = roll.notes;
  const canvas = el("canvas", { class: "roll", role: "img", "aria-label": "piano roll" });
  const width = 960, height = 300, left = 36, bottom = 18;
  canvas.width = width; canvas.height = height;
  const g = canvas.getContext("2d");
  let low = 60, high = 72, end = roll.bar_beats;
  if (notes.length) {
    low = Math.min(...notes.map((n) => n[0])) - 2;
    high = Math.max(...notes.map((n) => n[0])) + 2;
    end = Math.max(end, ...notes.map((n) => n[2]));
  }
  if (high - low < 14) { const mid = Math.round((low + high) / 2); low = mid - 7; high = mid + 7; }
  const x = (beat) => left + (beat / end) * (width - left - 4);
  const row = (height - bottom) / (high - low + 1);
  const y = (pitch) => (high - pitch) * row;
  g.fillStyle = "white"; g.fillRect(0, 0, width, height);
  g.font = "10px sans-serif"; g.textBaseline = "middle";
  for (let p = low; p <= high; p++) {
    if ([1, 3, 6, 8, 10].includes(((p % 12) + 12) % 12)) {
      g.fillStyle = "#f0f0f0"; g.fillRect(left, y(p), width - left, row);
    }
    if (p % 12 === 0) { g.fillStyle = "#444"; g.fillText(`C${p / 12 - 1}`, 2, y(p) + row / 2); }
  }
  g.strokeStyle = "#b0b0b0"; g.lineWidth = 1;
  g.textBaseline = "alphabetic";
  for (let beat = 0, bar = 1; beat <= end + 1e-9; beat += roll.bar_beats, bar++) {
    g.beginPath(); g.moveTo(x(beat), 0); g.lineTo(x(beat), height - bottom); g.stroke();
    g.fillStyle = "#666"; g.fillText(String(bar), x(beat) + 2, height - 4);
  }
  for (const [pitch, start, stop, velocity, given] of notes) {
    g.globalAlpha = 0.45 + 0.55 * Math.min(Math.max(velocity, 1), 127) / 127;
    // Given notes (a melody harmonized, the bars kept) in the score's colour for them.
    g.fillStyle = given ? "#c0392b" : pitch >= 60 ? "#1f5fa8" : "#d9822b";
    g.fillRect(x(start), y(pitch) + 0.1 * row, Math.max(1, x(stop) - x(start)), 0.8 * row);
  }
  g.globalAlpha = 1;
  return canvas;
}

function sampleSection(sample, index) {
  const section = el("section", { class: "sample", "data-sample": String(index) });
  section.append(el("h2", {}, sample.title || sample.name));
  const f = sample.files;
  if (f.wav) {
    const player = el("p");
    player.append(el("audio", { controls: "", preload: "metadata", src: f.wav }));
    section.append(player);
  }
  f.svg.forEach((src, page) => {
    section.append(el("img", { class: "score", src: src,
      alt: `score page ${page + 1} of ${f.svg.length}` }));
  });
  if (sample.roll) section.append(pianoRoll(sample.roll));
  else if (f.roll) section.append(el("img", { class: "roll", src: f.roll, alt: "piano roll" }));
  const links = el("p", { class: "links" });
  for (const [key, label] of [["midi", "MIDI"], ["musicxml", "MusicXML"], ["wav", "WAV"]]) {
    if (f[key]) links.append(el("a", { href: f[key] + "?download=1", "data-kind": key }, label));
  }
  if (f.midi) {
    const again = el("button", { type: "button", class: "again" }, "Regenerate bars of this sample");
    again.addEventListener("click", () => useAsPrimer(sample, f.midi));
    links.append(again);
  }
  section.append(links);
  for (const [stage, message] of Object.entries(sample.errors || {})) {
    section.append(el("p", { class: "error" }, `${stage} failed: ${message}`));
  }
  const facts = {};
  for (const [k, v] of Object.entries(sample)) {
    if (!["files", "errors", "title", "name", "roll"].includes(k)) facts[k] = v;
  }
  const table = el("table", { class: "facts" });
  factsTable(table, facts);
  section.append(table);
  return section;
}

function showResults(job) {
  const results = $("results");
  results.replaceChildren();
  const head = el("p");
  head.append(el("span", {}, `${job.samples.length} sample(s) from ${job.model} in ` +
    `${job.seconds.toFixed(2)} s (waited ${job.waited.toFixed(2)} s in the queue). `));
  if (job.primer) {
    const tracks = job.primer.tracks.length ? ` (tracks: ${job.primer.tracks.join(", ")})` : "";
    head.append(el("span", { class: "primer" }, `Primer: ${job.primer.name}${tracks}. `));
  }
  if (job.melody) {
    const tracks = job.melody.tracks.length ? ` (tracks: ${job.melody.tracks.join(", ")})` : "";
    head.append(el("span", { class: "primer" }, `Melody: ${job.melody.name}${tracks}. `));
  }
  if (job.settings.infill) {
    head.append(el("span", {}, `Bars regenerated: ${job.settings.infill} (given notes in red). `));
  }
  if (job.gallery) head.append(el("a", { href: job.gallery }, "gallery page"));
  results.append(head);
  job.samples.forEach((s, i) => results.append(sampleSection(s, i)));
  results.setAttribute("data-job", job.id);
}

async function poll(id) {
  for (;;) {
    const answer = await fetch(`/api/jobs/${id}`);
    const job = await answer.json();
    if (!answer.ok) throw new Error(job.error || `HTTP ${answer.status}`);
    $("status").textContent = job.state === "done" ? "done" : progressText(job);
    $("progress").value = progressValue(job);
    if (job.state === "done") return job;
    if (job.state === "error") throw new Error(job.message);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function generate(event) {
  event.preventDefault();
  $("error").textContent = "";
  const body = { model: $("model").value, key: $("key").value, scale: $("scale").value,
                 style: $("style").value, meter: $("meter").value, infill: $("infill").value };
  for (const name of ["temperature", "top_p", "bars", "seed", "num_samples", "qpm", "particles",
                      "melody_track"]) {
    if ($(name).value !== "") body[name] = Number($(name).value);
  }
  setBusy(true);
  try {
    if (resultPrimer && !$("primer").files[0] && !$("melody").files[0]) {
      const answer = await fetch(resultPrimer.url);
      if (!answer.ok) throw new Error(`${resultPrimer.name}: the result is no longer there`);
      const data = bytesToBase64(new Uint8Array(await answer.arrayBuffer()));
      body.primer = { name: resultPrimer.name, data: data };
    }
    for (const field of ["primer", "melody"]) {
      const file = $(field).files[0];
      if (!file) continue;
      if (file.size > catalogue.max_primer_bytes) {
        throw new Error(`${field} ${file.name}: larger than the limit of ` +
          `${Math.floor(catalogue.max_primer_bytes / 1024)} KiB`);
      }
      body[field] = { name: file.name, data: await readFile(file) };
    }
    $("status").textContent = "sending...";
    const answer = await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const reply = await answer.json();
    if (!answer.ok) throw new Error(reply.error || `HTTP ${answer.status}`);
    showResults(await poll(reply.job));
  } catch (e) {
    $("status").textContent = "";
    $("error").textContent = e.message;
  } finally {
    setBusy(false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", generate);
  $("primer").addEventListener("change", () => {
    resultPrimer = null;
    $("result-primer").textContent = "";
  });
  loadModels().catch((e) => { $("error").textContent = `cannot load the models: ${e.message}`; });
});
