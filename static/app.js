// tuneserve web page: plain ES module, no framework, no build step.
// Talks to the /v1 JSON API of the same origin.

const $ = (sel) => document.querySelector(sel);
const KEY_STORAGE = 'tuneserve.apiKey';
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

// ---------------------------------------------------------------- errors

/** An error the page can show to people. */
class PageError extends Error {
  constructor(message, { status = 0, code = '' } = {}) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const UNREACHABLE = 'Cannot reach the server. Check that tuneserve is running and that this page was opened from it, then try again.';

/** Turns an HTTP response with the API's error shape into a PageError. */
async function errorFrom(status, text) {
  let code = '';
  let message = '';
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      code = body.error.code || '';
      message = body.error.message || '';
    }
  } catch { /* not JSON */ }
  if (!message) message = status >= 500 ? `The server failed (HTTP ${status}).` : `Request failed (HTTP ${status}).`;
  if (status === 401) message = `The server refused the request: ${message}.`;
  return new PageError(message, { status, code });
}

function showError(el, err) {
  if (typeof el === 'string') el = $(el);
  if (!err) {
    el.hidden = true;
    el.textContent = '';
    return;
  }
  const msg = err instanceof PageError ? err.message : (err && err.message) || String(err);
  const code = err instanceof PageError && err.code ? ` [${err.code}]` : '';
  el.textContent = msg + code;
  el.hidden = false;
}

// ---------------------------------------------------------------- API key

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || '';
}

function updateKeyState() {
  $('#key-state').textContent = apiKey() ? 'API key set (this tab)' : 'No API key set';
}

let keyPrompt = null;

/**
 * Shows the key form once at a time; resolves true when a key was entered,
 * false when cancelled. `refused` is the server's message when a key was
 * already sent and refused.
 */
function askForKey(reason, refused) {
  if (keyPrompt) return keyPrompt;
  const dlg = $('#key-dialog');
  $('#key-reason').textContent = reason;
  showError('#key-error', refused ? new PageError(refused) : null);
  $('#key-input').value = '';
  keyPrompt = new Promise((resolve) => {
    const done = (ok) => {
      $('#key-form').removeEventListener('submit', onSubmit);
      $('#key-cancel').removeEventListener('click', onCancel);
      dlg.removeEventListener('cancel', onCancel);
      if (dlg.open) dlg.close();
      keyPrompt = null;
      resolve(ok);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const v = $('#key-input').value.trim();
      if (!v) {
        showError('#key-error', new PageError('Enter the key, or cancel.'));
        return;
      }
      sessionStorage.setItem(KEY_STORAGE, v);
      updateKeyState();
      done(true);
    };
    const onCancel = (e) => {
      e.preventDefault();
      done(false);
    };
    $('#key-form').addEventListener('submit', onSubmit);
    $('#key-cancel').addEventListener('click', onCancel);
    dlg.addEventListener('cancel', onCancel);
    dlg.showModal();
    $('#key-input').focus();
  });
  return keyPrompt;
}

/**
 * Runs `attempt()` (which sends the stored key); on 401 asks for a key and
 * tries again, until it succeeds or the person cancels.
 */
async function withKey(attempt) {
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof PageError) || err.status !== 401) throw err;
      const hadKey = !!apiKey();
      const ok = await askForKey(
        'This server needs an API key for this action.',
        hadKey ? `The key was refused (${err.message.replace(/^The server refused the request: /, '').replace(/\.$/, '')}). Try again.` : '',
      );
      if (!ok) {
        throw new PageError(hadKey
          ? 'Wrong API key: the server refused it. Enter the right key with "API key…" and try again.'
          : 'This action needs an API key. Enter it with "API key…" and try again.', { status: 401, code: err.code });
      }
    }
  }
}

// ---------------------------------------------------------------- HTTP

async function request(method, path, { json, body, auth = false } = {}) {
  const headers = {};
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  }
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body });
  } catch {
    throw new PageError(UNREACHABLE, { code: 'unreachable' });
  }
  const text = await resp.text();
  if (!resp.ok) throw await errorFrom(resp.status, text);
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new PageError(`The server answered with something that is not JSON (HTTP ${resp.status}).`);
  }
}

const api = {
  // With a key configured every route needs it; a 401 asks for it once and retries.
  get: (path) => withKey(() => request('GET', path)),
  post: (path, json) => withKey(() => request('POST', path, { json })),
  postForm: (path, form) => withKey(() => request('POST', path, { body: form })),
};

/** Multipart upload with progress (fetch has no upload progress). */
function uploadWithProgress(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    const key = apiKey();
    if (key) xhr.setRequestHeader('Authorization', `Bearer ${key}`);
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.upload.addEventListener('load', () => onProgress(1, true));
    xhr.addEventListener('load', async () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch {
          reject(new PageError('The server answered the upload with something that is not JSON.'));
        }
      } else {
        reject(await errorFrom(xhr.status, xhr.responseText));
      }
    });
    xhr.addEventListener('error', () => reject(new PageError(UNREACHABLE, { code: 'unreachable' })));
    xhr.addEventListener('abort', () => reject(new PageError('The upload was aborted.')));
    xhr.send(form);
  });
}

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const fmt = (x, d = 4) => (typeof x === 'number' && Number.isFinite(x) ? x.toFixed(d) : '–');
const shortId = (id) => (id || '').slice(0, 8);
const when = (secs) => (secs ? new Date(secs * 1000).toLocaleString() : '–');
const STAGE_NAMES = { features: 'caching features', frozen: 'stage 1: frozen base', finetune: 'stage 2: fine-tuning' };

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** Makes a wrapper a drop target for its file input (the input stays the keyboard path). */
function dropZone(zone, input, onFiles) {
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const files = [...(e.dataTransfer?.files || [])];
    if (files.length) onFiles(files);
  });
  input.addEventListener('change', () => {
    const files = [...input.files];
    if (files.length) onFiles(files);
    input.value = '';
  });
}

// ---------------------------------------------------------------- datasets

let datasets = [];

async function loadDatasets(selectId) {
  const list = await api.get('/v1/datasets?limit=100');
  datasets = list.data;
  const sel = $('#dataset-select');
  const keep = selectId || sel.value;
  sel.replaceChildren();
  if (!datasets.length) sel.append(el('option', { value: '', text: '(upload one first)' }));
  for (const d of datasets) {
    const n = d.counts.reduce((a, c) => a + c.train + c.validation, 0);
    sel.append(el('option', { value: d.id, text: `${d.name} — ${d.classes.length} classes, ${n} images (${shortId(d.id)})` }));
  }
  if (keep && datasets.some((d) => d.id === keep)) sel.value = keep;
}

function renderDataset(d) {
  const box = $('#dataset-summary');
  box.replaceChildren();
  if (!d) return;
  const total = (k) => d.counts.reduce((a, c) => a + c[k], 0);
  const table = el('table', { id: 'class-table' },
    el('caption', { text: `${d.name}: ${d.classes.length} classes, ${formatBytes(d.archive_bytes)} archive` }),
    el('thead', {}, el('tr', {},
      el('th', { scope: 'col', text: 'Class' }),
      el('th', { scope: 'col', text: 'Train' }),
      el('th', { scope: 'col', text: 'Validation' }))),
    el('tbody', {}, ...d.counts.map((c) => el('tr', {},
      el('th', { scope: 'row', text: c.class }),
      el('td', { text: String(c.train) }),
      el('td', { text: String(c.validation) })))),
    el('tfoot', {}, el('tr', {},
      el('th', { scope: 'row', text: 'Total' }),
      el('td', { text: String(total('train')) }),
      el('td', { text: String(total('validation')) }))));
  box.append(el('div', { class: 'table-wrap' }, table));
  if (!d.has_validation) {
    box.append(el('p', { class: 'muted', text: 'No validation folder: the job holds out part of the training images.' }));
  }
  const rejected = d.rejected || [];
  const n = d.rejected_count ?? rejected.length;
  if (n > 0) {
    const items = rejected.map((r) => el('li', {}, el('code', { text: r.path ?? r.file ?? JSON.stringify(r) }),
      document.createTextNode(` — ${r.reason ?? ''}`)));
    box.append(el('details', { id: 'rejected', open: n <= 10 },
      el('summary', { text: `${n} file${n === 1 ? '' : 's'} left out` }),
      el('ul', { class: 'rejected' }, ...items)));
  } else {
    box.append(el('p', { class: 'muted', id: 'rejected-none', text: 'No files were left out.' }));
  }
}

async function uploadDataset(file) {
  showError('#dataset-error', null);
  const row = $('#upload-row');
  const bar = $('#upload-progress');
  const label = $('#upload-label');
  const form = () => {
    const f = new FormData();
    f.append('name', file.name);
    f.append('file', file, file.name);
    return f;
  };
  row.hidden = false;
  try {
    const d = await withKey(() => {
      bar.value = 0;
      label.textContent = `Uploading ${file.name} (${formatBytes(file.size)})…`;
      return uploadWithProgress('/v1/datasets', form(), (frac, done) => {
        bar.value = Math.round(frac * 100);
        if (done) {
          label.textContent = `Checking ${file.name}…`;
          bar.removeAttribute('value'); // indeterminate while the server unpacks and scans
        }
      }).catch((err) => {
        if (err.status === 401) {
          bar.value = 0;
          label.textContent = 'Waiting for the API key…';
        }
        throw err;
      });
    });
    bar.value = 100;
    label.textContent = `Uploaded ${file.name}.`;
    renderDataset(d);
    await loadDatasets(d.id);
  } catch (err) {
    row.hidden = true;
    showError('#dataset-error', err);
  }
}

async function showSelectedDataset() {
  const id = $('#dataset-select').value;
  showError('#dataset-error', null);
  if (!id) return renderDataset(null);
  try {
    renderDataset(await api.get(`/v1/datasets/${id}`));
  } catch (err) {
    showError('#dataset-error', err);
  }
}

// ---------------------------------------------------------------- training

// Blank fields take the recipe's value; the job shows what was resolved.
function readConfig() {
  const cfg = { recipe: $('#recipe').value, backbone: $('#backbone').value };
  for (const k of ['frozen_epochs', 'finetune_epochs', 'batch_size', 'image_size']) {
    const raw = $(`#${k}`).value.trim();
    if (raw === '') continue;
    const v = Number(raw);
    if (!Number.isInteger(v) || v < 0) throw new PageError(`${$(`label[for=${k}]`).textContent} must be a whole number.`);
    cfg[k] = v;
  }
  for (const k of ['frozen_lr', 'finetune_lr', 'dropout']) {
    const raw = $(`#${k}`).value.trim();
    if (raw === '') continue;
    const v = Number(raw);
    if (!Number.isFinite(v)) throw new PageError(`${$(`label[for=${k}]`).textContent} must be a number.`);
    cfg[k] = v;
  }
  for (const k of ['augment', 'tta']) {
    if ($(`#${k}`).value !== '') cfg[k] = $(`#${k}`).value === 'true';
  }
  return cfg;
}

// One line for the settings a job runs with.
function recipeText(hp) {
  const size = hp.image_size ? `${hp.image_size} px` : 'notebook size';
  return `${hp.recipe || 'notebook'}: ${size}, ${hp.frozen_epochs} + ${hp.finetune_epochs} epochs, batch ${hp.batch_size}, ` +
    `augmentation ${hp.augment ? 'on' : 'off'}, test-time mirroring ${hp.tta ? 'on' : 'off'}`;
}

async function startJob(e) {
  e.preventDefault();
  showError('#train-error', null);
  const dataset_id = $('#dataset-select').value;
  const button = $('#start-job');
  try {
    if (!dataset_id) throw new PageError('Upload or choose a dataset first.');
    const hyperparameters = readConfig();
    button.disabled = true;
    const job = await api.post('/v1/jobs', { dataset_id, variant: $('#variant').value, hyperparameters });
    watchJob(job);
    refreshJobs();
  } catch (err) {
    showError('#train-error', err);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- live job

const live = {
  job: null,
  source: null,
  epochs: [], // {stage, epoch, epochs, train, validation, seconds}
  lastSeq: 0,
  fetchingResult: false,
};

function stageOffset(job, stage) {
  return stage === 'finetune' ? job.hyperparameters.frozen_epochs : 0;
}

function setStatus(status) {
  const b = $('#live-status');
  b.textContent = status;
  b.className = `badge ${status}`;
  $('#live-body').dataset.status = status;
}

/** "about 3 min left" from seconds. */
function etaText(s) {
  if (s === undefined || s === null || !Number.isFinite(s)) return '';
  if (s < 90) return `, about ${Math.max(1, Math.round(s))} s left in this stage`;
  if (s < 5400) return `, about ${Math.round(s / 60)} min left in this stage`;
  return `, about ${(s / 3600).toFixed(1)} h left in this stage`;
}

function setProgress(stage, epoch, epochs, step, steps, epochDone = false, etaS = undefined) {
  const job = live.job;
  $('#live-stage').textContent = STAGE_NAMES[stage] || stage || '–';
  if (stage === 'features') {
    $('#live-epoch').textContent = '–';
    $('#live-progress-label').textContent = `Caching features: ${step}/${steps}${etaText(etaS)}`;
    $('#live-progress').value = steps ? (100 * step) / steps : 0;
    return;
  }
  $('#live-epoch').textContent = epoch ? `${epoch} / ${epochs}` : '–';
  const hp = job.hyperparameters;
  const total = (hp.frozen_epochs || 0) + (hp.finetune_epochs || 0);
  const within = epochDone ? 1 : steps ? step / steps : 0;
  const done = stageOffset(job, stage) + Math.max(0, (epoch || 1) - 1) + within;
  const frac = total ? Math.min(1, done / total) : 0;
  $('#live-progress').value = 100 * frac;
  const detail = epochDone ? ` (epoch ${epoch} done)` : steps ? ` (step ${step}/${steps}${etaText(etaS)})` : '';
  $('#live-progress-label').textContent = `Progress ${pct(frac)}${detail}`;
}

function watchJob(job) {
  if (live.source) live.source.close();
  live.job = job;
  live.epochs = [];
  live.lastSeq = 0;
  live.fetchingResult = false;
  $('#live-empty').hidden = true;
  $('#live-body').hidden = false;
  $('#live-id').textContent = job.id;
  $('#live-recipe').textContent = recipeText(job.hyperparameters);
  showError('#live-error', null);
  $('#live-result').hidden = true;
  $('#confusion').hidden = true;
  setStatus(job.status);
  $('#live-stage').textContent = STAGE_NAMES[job.stage] || '–';
  $('#live-epoch').textContent = '–';
  $('#live-progress').value = 0;
  $('#live-progress-label').textContent = 'Progress';
  drawCharts();
  // Replays the job's history from the start, then follows it live; the
  // browser reconnects by itself with Last-Event-ID after a dropped connection.
  // EventSource cannot send headers: the key goes as access_token (this route only).
  const key = apiKey();
  const token = key ? `&access_token=${encodeURIComponent(key)}` : '';
  const src = new EventSource(`/v1/jobs/${job.id}/events?stream=true${token}`);
  live.source = src;
  const on = (type, fn) => src.addEventListener(type, (e) => {
    if (live.source !== src) return;
    const seq = Number(e.lastEventId || 0);
    if (seq && seq <= live.lastSeq) return; // a replay after a reconnect
    if (seq) live.lastSeq = seq;
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      return;
    }
    fn(data);
  });
  on('status', (d) => {
    setStatus(d.status);
    if (d.status === 'failed') showError('#live-error', new PageError(`The job failed: ${d.error || 'no reason given'}`));
    if (d.status === 'queued' && d.reason) $('#live-stage').textContent = `queued again (${d.reason})`;
    if (TERMINAL.has(d.status)) {
      src.close();
      if (d.status === 'succeeded') {
        $('#live-progress').value = 100;
        $('#live-progress-label').textContent = 'Progress 100%';
      }
      finishJob(d.status);
      refreshJobs();
    }
  });
  on('progress', (d) => setProgress(d.stage, d.epoch, d.epochs, d.step, d.steps, false, d.eta_s));
  on('epoch', (d) => {
    live.epochs.push(d);
    setProgress(d.stage, d.epoch, d.epochs, 0, 0, true);
    drawCharts();
  });
  on('message', (d) => {
    if (d.text) $('#live-stage').title = d.text;
  });
  // Stage 1's model is published as its checkpoint lands: list it for predictions.
  on('checkpoint', (d) => {
    if (d.stage === 'frozen') setTimeout(() => loadModels(), 500);
  });
  src.addEventListener('error', () => {
    if (live.source !== src || src.readyState === EventSource.CLOSED) {
      if (live.source === src && !TERMINAL.has($('#live-body').dataset.status)) {
        showError('#live-error', new PageError('Lost the live connection to the server. ' + UNREACHABLE));
      }
      return;
    }
    // CONNECTING: the browser retries; say so while it does.
    if (!TERMINAL.has($('#live-body').dataset.status)) {
      showError('#live-error', new PageError('Connection to the server lost; reconnecting…'));
    }
  });
  src.addEventListener('open', () => {
    if (live.source === src) showError('#live-error', null);
  });
}

/** After the final event: the job row (result with the confusion matrix, model id). */
async function finishJob(status) {
  const job = live.job;
  if (live.fetchingResult) return;
  live.fetchingResult = true;
  try {
    // The final status event can precede the stored result by a moment.
    for (let i = 0; i < 40; i++) {
      const j = await api.get(`/v1/jobs/${job.id}`);
      if (live.job !== job) return;
      if (TERMINAL.has(j.status) && (j.status !== 'succeeded' || j.result)) {
        live.job = j;
        renderOutcome(j);
        if (j.status === 'succeeded') loadModels(j.model_id);
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (err) {
    showError('#live-error', err);
  }
}

function renderOutcome(j) {
  setStatus(j.status);
  if (j.status === 'failed') showError('#live-error', new PageError(`The job failed: ${j.error || 'no reason given'}`));
  if (j.status === 'cancelled') $('#live-stage').textContent = 'cancelled';
  if (j.status !== 'succeeded' || !j.result) return;
  const r = j.result;
  const res = $('#live-result');
  res.textContent = `Finished: validation accuracy ${pct(r.validation.accuracy)}, loss ${fmt(r.validation.loss)}; `
    + `best checkpoint ${r.best_checkpoint}; model ${shortId(j.model_id)} is now the default.`;
  res.hidden = false;
  if (r.confusion && r.classes) renderConfusion(r.classes, r.confusion);
}

function renderConfusion(classes, m) {
  const max = Math.max(1, ...m.flat());
  const table = el('table', { class: 'confusion' },
    el('caption', { text: 'Rows: true class. Columns: predicted class.' }),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'true \\ predicted' }),
      ...classes.map((c) => el('th', { scope: 'col', text: c })))),
    el('tbody', {}, ...m.map((row, i) => el('tr', {},
      el('th', { scope: 'row', text: classes[i] }),
      ...row.map((n, k) => {
        const td = el('td', { text: String(n), class: i === k ? 'diag' : 'off' });
        td.style.setProperty('--shade', (n / max).toFixed(3));
        return td;
    })))));
  $('#confusion-table').replaceChildren(table);
  $('#confusion').hidden = false;
}

// ---------------------------------------------------------------- charts

/** One line chart: series [{name, cls, points: [[x, y]]}], x = epoch number across both stages. */
function lineChart(node, series, { yMin, yMax, yFmt, xMax, boundary }) {
  const W = 420, H = 220, L = 46, R = 12, T = 12, B = 36;
  const pw = W - L - R, ph = H - T - B;
  const xs = (x) => L + (xMax <= 1 ? pw / 2 : ((x - 1) / (xMax - 1)) * pw);
  const ys = (y) => T + ph - ((y - yMin) / (yMax - yMin || 1)) * ph;
  node.replaceChildren();
  node.append(svg('rect', { x: L, y: T, width: pw, height: ph, class: 'plot-bg' }));
  for (let i = 0; i <= 4; i++) {
    const v = yMin + ((yMax - yMin) * i) / 4;
    const y = ys(v);
    node.append(svg('line', { x1: L, x2: L + pw, y1: y, y2: y, class: 'grid' }));
    node.append(svg('text', { x: L - 6, y: y + 4, class: 'tick', 'text-anchor': 'end' }, yFmt(v)));
  }
  const step = Math.max(1, Math.ceil(xMax / 10));
  for (let x = 1; x <= xMax; x += step) {
    node.append(svg('text', { x: xs(x), y: T + ph + 16, class: 'tick', 'text-anchor': 'middle' }, String(x)));
  }
  node.append(svg('text', { x: L + pw / 2, y: H - 4, class: 'axis-label', 'text-anchor': 'middle' }, 'epoch'));
  if (boundary > 0 && boundary < xMax) {
    const bx = (xs(boundary) + xs(boundary + 1)) / 2;
    node.append(svg('line', { x1: bx, x2: bx, y1: T, y2: T + ph, class: 'boundary' }));
    node.append(svg('text', { x: bx - 4, y: T + 12, class: 'tick', 'text-anchor': 'end' }, 'fine-tune →'));
  }
  let count = 0;
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map(([x, y], i) => `${i ? 'L' : 'M'}${xs(x).toFixed(1)},${ys(y).toFixed(1)}`).join(' ');
    node.append(svg('path', { d, class: `line ${s.cls}` }));
    for (const [x, y] of s.points) {
      const c = svg('circle', { cx: xs(x), cy: ys(y), r: 3, class: `dot ${s.cls}` });
      c.append(svg('title', {}, `${s.name}, epoch ${x}: ${yFmt(y, true)}`));
      node.append(c);
      count++;
    }
  }
  // Legend.
  series.forEach((s, i) => {
    const lx = L + 8 + i * 110;
    node.append(svg('line', { x1: lx, x2: lx + 18, y1: T + ph - 10, y2: T + ph - 10, class: `line ${s.cls}` }));
    node.append(svg('text', { x: lx + 22, y: T + ph - 6, class: 'legend' }, s.name));
  });
  node.dataset.points = String(count);
}

function drawCharts() {
  const job = live.job;
  const rows = live.epochs;
  const x = (d) => stageOffset(job, d.stage) + d.epoch;
  const hp = job ? job.hyperparameters : { frozen_epochs: 0, finetune_epochs: 0 };
  const xMax = Math.max(1, (hp.frozen_epochs || 0) + (hp.finetune_epochs || 0), ...rows.map(x));
  const boundary = hp.finetune_epochs > 0 ? hp.frozen_epochs : 0;
  const get = (k, m) => rows.map((d) => [x(d), d[k][m]]).filter(([, v]) => Number.isFinite(v));
  const losses = rows.flatMap((d) => [d.train.loss, d.validation.loss]).filter(Number.isFinite);
  const lossMax = Math.max(0.1, ...losses) * 1.1;
  lineChart($('#chart-loss'), [
    { name: 'train', cls: 'train', points: get('train', 'loss') },
    { name: 'validation', cls: 'val', points: get('validation', 'loss') },
  ], { yMin: 0, yMax: lossMax, yFmt: (v) => v.toFixed(2), xMax, boundary });
  lineChart($('#chart-acc'), [
    { name: 'train', cls: 'train', points: get('train', 'accuracy') },
    { name: 'validation', cls: 'val', points: get('validation', 'accuracy') },
  ], { yMin: 0, yMax: 1, yFmt: (v, exact) => (exact ? pct(v) : `${Math.round(v * 100)}%`), xMax, boundary });
  $('#chart-loss').setAttribute('aria-label', `Loss per epoch, ${rows.length} epochs done`);
  $('#chart-acc').setAttribute('aria-label', `Accuracy per epoch, ${rows.length} epochs done`);
  $('#live-body').dataset.epochsDone = String(rows.length);
  $('#epoch-table tbody').replaceChildren(...rows.map((d) => el('tr', {},
    el('td', { text: String(x(d)) }),
    el('td', { text: d.stage }),
    el('td', { text: `${d.epoch}/${d.epochs}` }),
    el('td', { text: fmt(d.train.loss) }),
    el('td', { text: pct(d.train.accuracy) }),
    el('td', { text: fmt(d.validation.loss) }),
    el('td', { text: pct(d.validation.accuracy) }),
    el('td', { text: fmt(d.seconds, 1) }))));
}

// ---------------------------------------------------------------- jobs list

let jobsTimer = null;

async function refreshJobs() {
  clearTimeout(jobsTimer);
  try {
    const list = await api.get('/v1/jobs?limit=50');
    showError('#jobs-error', null);
    renderJobs(list.data);
    const active = list.data.some((j) => !TERMINAL.has(j.status));
    jobsTimer = setTimeout(refreshJobs, active ? 3000 : 15000);
  } catch (err) {
    showError('#jobs-error', err);
    jobsTimer = setTimeout(refreshJobs, 15000);
  }
}

function renderJobs(jobs) {
  $('#jobs-empty').hidden = jobs.length > 0;
  const rows = jobs.map((j) => {
    const hp = j.hyperparameters;
    const progress = j.stage
      ? `${STAGE_NAMES[j.stage] || j.stage}${j.epoch ? `, epoch ${j.epoch}/${j.epochs}` : ''}`
      : '–';
    const actions = el('td', { class: 'actions' },
      el('button', { type: 'button', class: 'secondary', text: 'Watch',
        'aria-label': `Watch job ${shortId(j.id)}`, onclick: () => watchJob(j) }));
    if (!TERMINAL.has(j.status)) {
      actions.append(el('button', { type: 'button', class: 'danger', text: j.cancel_requested ? 'Cancelling…' : 'Cancel',
        disabled: j.cancel_requested, 'aria-label': `Cancel job ${shortId(j.id)}`,
        onclick: (e) => cancelJob(j.id, e.currentTarget) }));
    }
    return el('tr', { 'data-job': j.id },
      el('td', {}, el('code', { title: j.id, text: shortId(j.id) })),
      el('td', {}, el('span', { class: `badge ${j.status}`, text: j.status })),
      el('td', { text: `${hp.backbone} (${j.variant})` }),
      el('td', { text: progress }),
      el('td', { text: j.validation_metrics ? pct(j.validation_metrics.accuracy) : '–' }),
      el('td', { text: when(j.created_at) }),
      actions);
  });
  $('#jobs-table tbody').replaceChildren(...rows);
}

async function cancelJob(id, button) {
  showError('#jobs-error', null);
  button.disabled = true;
  try {
    await api.post(`/v1/jobs/${id}/cancel`);
  } catch (err) {
    showError('#jobs-error', err);
    button.disabled = false;
  }
  refreshJobs();
}

// ---------------------------------------------------------------- predict

// Model id -> its listing, to say which model answered.
const knownModels = new Map();

async function loadModels(selectId) {
  try {
    const list = await api.get('/v1/models?limit=100');
    knownModels.clear();
    for (const m of list.data) knownModels.set(m.id, m);
    const sel = $('#model-select');
    const keep = selectId || sel.value;
    sel.replaceChildren(el('option', { value: '', text: list.data.length ? '(the default model)' : '(no model yet: train one)' }));
    for (const m of list.data) {
      sel.append(el('option', { value: m.id,
        text: `${m.backbone} ${m.variant} — ${m.classes.join(', ')} — val. acc. ${pct(m.validation_metrics.accuracy)}${m.stage === 'stage1' ? ' — stage 1, job still running' : ''}${m.is_default ? ' (default)' : ''} (${shortId(m.id)})` }));
    }
    if (keep && list.data.some((m) => m.id === keep)) sel.value = keep;
  } catch (err) {
    showError('#predict-error', err);
  }
}

async function predict(files) {
  showError('#predict-error', null);
  const images = files.filter((f) => !f.type || f.type.startsWith('image/'));
  if (!images.length) {
    showError('#predict-error', new PageError('Choose image files (PNG, JPEG, WebP, BMP, GIF).'));
    return;
  }
  const model = $('#model-select').value;
  const path = model ? `/v1/models/${model}/predict` : '/v1/predict';
  $('#predict-busy').hidden = false;
  try {
    const out = await api.postForm(path, (() => {
      const f = new FormData();
      for (const img of images) f.append('images', img, img.name);
      return f;
    })());
    const list = $('#predictions');
    const items = out.predictions.map((p, i) => predictionItem(images[i], p, out.model));
    list.prepend(...items);
  } catch (err) {
    showError('#predict-error', err);
  } finally {
    $('#predict-busy').hidden = true;
  }
}

function predictionItem(file, p, model) {
  const url = URL.createObjectURL(file);
  const probs = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
  const bars = el('ul', { class: 'bars' }, ...probs.map(([cls, v]) => el('li', {},
    el('span', { class: 'bar-label', text: cls }),
    el('span', { class: 'bar', role: 'img', 'aria-label': `${cls}: ${pct(v)}` },
      (() => {
        const fill = el('span', { class: `fill${cls === p.label ? ' top' : ''}` });
        fill.style.width = `${Math.max(0, Math.min(1, v)) * 100}%`;
        return fill;
      })()),
    el('span', { class: 'bar-value', text: pct(v) }))));
  return el('li', { class: 'prediction' },
    el('img', { src: url, alt: file.name, class: 'thumb', onload: () => URL.revokeObjectURL(url) }),
    el('div', { class: 'pred-body' },
      el('p', { class: 'file-name', text: file.name }),
      el('p', {}, document.createTextNode('Label: '), el('strong', { class: 'pred-label', text: p.label })),
      bars,
      el('p', { class: 'logits' }, document.createTextNode('logits: '),
        el('code', { text: `[${p.logits.map((x) => x.toFixed(4)).join(', ')}]` })),
      el('p', { class: 'muted small', text: `model ${shortId(model)}${knownModels.get(model)?.stage === 'stage1'
        ? ' (the stage-1 model: its job is still fine-tuning; the final model replaces it)' : ''}` })));
}

// ---------------------------------------------------------------- start

function init() {
  updateKeyState();
  dropZone($('[data-drop-for=dataset-file]'), $('#dataset-file'), (files) => uploadDataset(files[0]));
  dropZone($('[data-drop-for=predict-files]'), $('#predict-files'), predict);
  $('#dataset-select').addEventListener('change', showSelectedDataset);
  $('#train-form').addEventListener('submit', startJob);
  $('#jobs-refresh').addEventListener('click', refreshJobs);
  drawCharts();

  const startup = async () => {
    try {
      await loadDatasets();
      showError('#global-error', null);
    } catch (err) {
      showError('#global-error', err);
      return;
    }
    refreshJobs();
    loadModels();
    // Open on the newest job that is still going, else the last one that ended.
    try {
      const list = await api.get('/v1/jobs?limit=20');
      const pick = list.data.find((j) => !TERMINAL.has(j.status)) || list.data[0];
      if (pick && !live.job) watchJob(pick);
    } catch { /* shown by the jobs list */ }
  };
  // A key entered by hand: load again what the page could not read without it.
  $('#key-button').addEventListener('click', async () => {
    if (await askForKey('Enter the API key for this server (kept in this browser tab only).', '')) startup();
  });
  startup();
  document.body.dataset.ready = 'true';
}

init();
