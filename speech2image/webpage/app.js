// speech2image web page: record, upload or type a prompt; POST it to /api/stream; show the
// transcript, previews sharpening step by step, then the images. Plain browser APIs only:
// MediaRecorder, Web Audio, fetch with a ReadableStream reader (EventSource cannot POST).
'use strict';

const NUMBER_PARAMETERS = ['num_images', 'num_inference_steps', 'guidance_scale', 'seed'];
const TEXT_PARAMETERS = ['task', 'language', 'negative_prompt'];
// Opus in WebM (Chrome, Firefox) or Ogg; MP4 for Safari. The server decodes all three with PyAV.
const RECORDING_TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4'];
// The events a stream ends with (speech2image/streaming.py).
const FINAL_EVENTS = ['done', 'error', 'cancelled'];
// The API key a person entered, kept for this tab only; sent as "Authorization: Bearer".
const API_KEY_STORAGE = 'speech2image-api-key';
// While the image service cannot be reached, how often the page asks again.
const SERVICE_RETRY_MS = 5000;
// Square sizes offered: the served model's own size times these, up to the service's max_side.
const SIZE_FACTORS = [1, 2, 4, 8];
// Settings estimated to take longer than this are warned of before Generate.
const SLOW_SECONDS = 20;
// The tag with the words as heard in their language, beside the English prompt (doc.text).
const HEARD_TAG = 'source_transcript';  // spoken_settings.SOURCE_TRANSCRIPT_TAG
// What a refusal of the page's one document starts with; a person needs only the reason.
const DOCUMENT_PREFIX = /^document 0(?: \(id [^)]*\))?: /;
// The settings a person sets (form) or says, by request parameter, as the page names them.
const SETTING_LABELS = {
  num_images: 'images', seed: 'seed', num_inference_steps: 'steps', guidance_scale: 'guidance',
  size: 'size', negative_prompt: 'without',
};

const $ = (id) => document.getElementById(id);
const recording = { recorder: null, context: null, meterFrame: 0, clock: 0 };
// The request being streamed: its fetch's AbortController, its id, how far it has come.
const live = { controller: null, requestId: '', step: 0, steps: 0, sent: {} };
// What the service serves (its /info: models, sizes, one step's cost), once it has answered.
const service = { info: null, retry: 0 };

/** Headers of every call to this page's server: JSON, and the key the person entered. */
function apiHeaders() {
  const headers = { 'Content-Type': 'application/json' };
  const key = sessionStorage.getItem(API_KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

/** A refusal's message as a person reads it: without the document's number and id. */
function personMessage(message) {
  return String(message).replace(DOCUMENT_PREFIX, '');
}

/** Ask the service what it serves; show the model, offer its sizes. Until it answers, say so and
 * ask again; when it wants a key, ask the person for one. */
async function checkService() {
  clearTimeout(service.retry);
  let response;
  let body;
  try {
    response = await fetch('/api/info', {
      method: 'POST', headers: apiHeaders(), body: JSON.stringify({ data: [{}] }),
    });
    body = await response.json().catch(() => ({}));
  } catch (error) {
    serviceProblem(`this page's server does not answer (${error.message})`);
    return;
  }
  if (response.status === 401) askForKey(body.error);
  else if (!response.ok) serviceProblem(personMessage(body.error || `${response.status} ${response.statusText}`));
  else showService(body.data[0].tags);
}

function serviceProblem(reason) {
  $('service').className = 'problem';
  $('service').textContent = `The image service is not ready: ${reason}. If it was started just now, `
    + `it is still loading its models; this page asks again every ${SERVICE_RETRY_MS / 1000} s.`;
  service.retry = setTimeout(checkService, SERVICE_RETRY_MS);
}

/** The gateway wants a key (401): forget a wrong one, and ask for it. */
function askForKey(reason) {
  const hadKey = sessionStorage.getItem(API_KEY_STORAGE) !== null;
  sessionStorage.removeItem(API_KEY_STORAGE);
  $('service').className = 'problem';
  $('service').textContent = hadKey ? `That key was refused: ${reason}.` : 'This service needs an API key.';
  $('key-form').hidden = false;
  $('api-key').focus();
}

/** The models the service serves, on the page: which one draws, and what it knows. */
function showService(tags) {
  const info = tags.diffusion;
  service.info = info;
  $('key-form').hidden = true;
  $('service').className = '';
  const heard = tags.whisper ? `; speech is heard by Whisper ${modelName(tags.whisper.model)}` : '';
  $('service').textContent = `Pictures are drawn by ${modelName(info.model)}, made for `
    + `${info.native_width} × ${info.native_height}${heard}.`
    + (info.description ? ` ${info.description}` : '');
  offerSizes(info);
}

/** A model's name as a person reads it: a local directory's last part, or the hub id. */
function modelName(model) {
  return model.startsWith('/') ? model.split('/').filter(Boolean).pop() : model;
}

/** The Size menu: the model's default, then squares from the size it is made for up to the
 * service's cap, each with what it costs here. */
function offerSizes(info) {
  const select = $('parameters').elements.size;
  const chosen = select.value;
  const options = [new Option(`model default (${info.width} × ${info.height})`, '')];
  for (const factor of SIZE_FACTORS) {
    const width = info.native_width * factor;
    const height = info.native_height * factor;
    if (Math.max(width, height) > info.max_side) break;
    const what = factor === 1 ? 'made for this model' : `${factor * factor}× its pixels`;
    const estimate = estimateSeconds(width, height);
    options.push(new Option(`${width} × ${height} · ${what}` + (estimate ? ` · ${duration(estimate)}` : ''), `${width}x${height}`));
  }
  select.replaceChildren(...options);
  select.value = options.some((option) => option.value === chosen) ? chosen : '';
  warnOfSlowChoice();
}

/** Seconds the form's settings take at width × height: one step as the service measured it at
 * its default size, times the pixels, steps and images (attention grows faster: at least this).
 * Null when the service has not measured a step. */
function estimateSeconds(width, height) {
  const info = service.info;
  if (!info || !info.step_seconds) return null;
  const fields = $('parameters').elements;
  const images = Number(fields.num_images.value) || info.num_images;
  const steps = Number(fields.num_inference_steps.value) || info.num_inference_steps;
  return info.step_seconds * ((width * height) / (info.width * info.height)) * images * steps;
}

function duration(seconds) {
  if (seconds < 1) return 'under 1 s';
  return seconds < 90 ? `about ${Math.round(seconds)} s` : `about ${Math.round(seconds / 60)} min`;
}

/** Under the settings, before Generate: a size larger than the model is made for, or settings
 * estimated slower than SLOW_SECONDS, with the estimate. */
function warnOfSlowChoice() {
  const info = service.info;
  const warning = $('size-warning');
  warning.hidden = true;
  if (!info) return;
  const size = $('parameters').elements.size.value;
  const [width, height] = size ? size.split('x').map(Number) : [info.width, info.height];
  const times = (width * height) / (info.native_width * info.native_height);
  const estimate = estimateSeconds(width, height);
  const parts = [];
  if (times > 1) {
    parts.push(`${width} × ${height} is ${times} times the pixels this model is made for `
      + `(${info.native_width} × ${info.native_height}): expect worse pictures`);
  }
  if (estimate !== null && (times > 1 || estimate > SLOW_SECONDS)) {
    parts.push(`at least ${duration(estimate)} on this server`);
  }
  if (!parts.length) return;
  warning.textContent = `${parts.join(', and ')}.`;
  warning.hidden = false;
}

/** The request parameters set in the Settings form; blank fields are left to the server. */
function requestParameters() {
  const fields = $('parameters').elements;
  const parameters = {};
  for (const name of NUMBER_PARAMETERS) {
    if (fields[name].value !== '') parameters[name] = Number(fields[name].value);
  }
  for (const name of TEXT_PARAMETERS) {
    const value = fields[name].value.trim();
    if (value !== '') parameters[name] = value;
  }
  if (fields.size.value) {
    const [width, height] = fields.size.value.split('x').map(Number);
    Object.assign(parameters, { width, height });
  }
  return parameters;
}

/**
 * Split Server-Sent Events text into its complete events and the unfinished rest.
 * In: the text received so far and not yet parsed. Out: { events: [{ event, data }], rest }:
 * `event` is the event's name ("message" when unnamed), `data` its data lines joined by "\n";
 * comments and events without data are dropped; `rest` goes in front of the next chunk.
 */
function parseServerSentEvents(text) {
  // Lines end in \n, \r\n or \r; a \r at the very end may be the first half of a \r\n.
  const blocks = text.replace(/\r\n|\r(?!$)/g, '\n').split('\n\n');
  const rest = blocks.pop();
  const events = [];
  for (const block of blocks) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) events.push({ event: name, data: data.join('\n') });
  }
  return { events, rest };
}

/** Read a streamed response's events, calling onEvent with each one's JSON as it arrives;
 * returns the final event (done, error or cancelled), or null if the stream broke off first. */
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    const parsed = parseServerSentEvents(rest + value);
    rest = parsed.rest;
    for (const { data } of parsed.events) {
      const event = JSON.parse(data);
      onEvent(event);
      if (FINAL_EVENTS.includes(event.event)) return event;
    }
  }
}

/** Show or hide the progress section, and lock the inputs meanwhile. */
function setBusy(busy) {
  $('status').hidden = !busy;
  for (const id of ['record', 'file', 'prompt', 'generate']) $(id).disabled = busy;
  $('cancel').disabled = !busy;
  if (!busy) return;
  showProgress(0, 0);
  $('status').scrollIntoView({ block: 'nearest' });
}

/** The progress bar at step of steps; no steps yet: a bar that only says "working". */
function showProgress(step, steps) {
  Object.assign(live, { step, steps });
  if (steps) Object.assign($('progress'), { max: steps, value: step });
  else $('progress').removeAttribute('value');
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
  $('error').scrollIntoView({ block: 'nearest' });
}

function showNotice(message) {
  $('notice').textContent = message;
  $('notice').hidden = false;
}

function clearOutput() {
  $('error').hidden = true;
  $('notice').hidden = true;
  $('result').hidden = true;
  clearImages();
}

function clearImages() {
  const images = [...$('images').querySelectorAll('img')];
  $('images').replaceChildren();
  images.forEach(releaseImageUrl);
}

/** Revoke the blob: URL an <img> shows (and its figure's download link) once the img is off the
 * page and done with it. The browser fetches an img's new src in a microtask, even when the img
 * was taken out of the page meanwhile: an img given its URL in this same task (a preview read
 * together with "done") would fetch a revoked URL (net::ERR_FILE_NOT_FOUND). Such an img keeps
 * its URL until it has loaded or failed. */
function releaseImageUrl(img) {
  const url = img.src;
  if (!url.startsWith('blob:')) return;
  if (img.complete) {
    URL.revokeObjectURL(url);
    return;
  }
  const revoke = () => URL.revokeObjectURL(url);
  img.addEventListener('load', revoke, { once: true });
  img.addEventListener('error', revoke, { once: true });
}

/** Stream one document through the Flow via this page's server; show each event as it comes. */
async function send(doc, source) {
  clearOutput();
  const controller = new AbortController();
  Object.assign(live, { controller, requestId: '', sent: requestParameters() });
  setBusy(true);
  $('status-text').textContent = 'Sending…';
  try {
    const response = await fetch('/api/stream', {
      method: 'POST',
      headers: apiHeaders(),
      body: JSON.stringify({ data: [withConversation(doc)], parameters: live.sent }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) askForKey(body.error);
      throw new Error(body.error || `the server answered ${response.status} ${response.statusText}`);
    }
    const final = await readEvents(response, (event) => showEvent(event, source));
    if (!final) throw new Error('the service broke off the stream; try again');
  } catch (error) {
    if (error.name === 'AbortError') showCancelled();
    else showError(error instanceof TypeError ? `cannot reach the server: ${error.message}` : personMessage(error.message));
  } finally {
    live.controller = null;
    setBusy(false);
  }
}

/** One event of the stream on the page (speech2image/schema.py's StreamEvent). */
function showEvent(event, source) {
  switch (event.event) {
    case 'accepted':
      live.requestId = event.request_id;
      $('status-text').textContent = event.queue_position
        ? `Waiting: ${event.queue_position} ahead…`
        : (source === 'typed' ? 'Reading the prompt…' : 'Listening…');
      break;
    case 'transcript':
      showTranscript(event, source);
      $('status-text').textContent = 'Painting…';
      break;
    case 'progress':
      showProgress(event.step, event.steps);
      $('status-text').textContent = `Painting: step ${event.step} of ${event.steps}`;
      break;
    case 'preview':
      showPreviews(event.images, event.step, event.steps);
      break;
    case 'done':
      showTranscript(event, source);
      clearImages();
      $('images').replaceChildren(...event.images.map(imageFigure));
      rememberTurn(event);
      break;
    case 'error':
      clearImages();
      showError(personMessage(event.message));
      break;
    case 'cancelled':
      showCancelled();
      break;
    default: // an event this page does not know yet: nothing to show
  }
}

function showCancelled() {
  clearImages();
  showNotice(live.steps ? `Cancelled after step ${live.step} of ${live.steps}.` : 'Cancelled.');
}

/** Stop the request: the server cancels it by id; before the id is known, or if the server
 * cannot, closing the connection cancels it too. */
async function cancel() {
  const { controller, requestId } = live;
  $('cancel').disabled = true;
  if (!controller) return;
  if (requestId) {
    const answer = await fetch('/api/stream/cancel', {
      method: 'POST',
      headers: apiHeaders(),
      body: JSON.stringify({ request_id: requestId }),
    }).catch(() => null);
    if (answer && answer.ok) return; // the stream ends with its "cancelled" event
  }
  controller.abort();
}

/** The transcript (or typed prompt) with its language, length and spoken settings. */
function showTranscript(doc, source) {
  $('result-title').textContent = source === 'typed' ? 'Prompt' : 'Transcript';
  $('transcript').textContent = doc.text;
  const info = [source === 'typed' ? 'typed' : `from ${source}`];
  if (doc.tags.language) {
    const probability = doc.tags.language_probability;
    info.push(`language ${doc.tags.language}` + (probability ? ` (${Math.round(probability * 100)}%)` : ''));
  }
  if (doc.tags.audio_seconds) info.push(`${Number(doc.tags.audio_seconds).toFixed(1)} s of audio`);
  const models = [...new Set((doc.images || []).map((image) => image.tags.model))];
  if (models.length) info.push(`drawn by ${models.map(modelName).join(', ')}`);
  $('transcript-info').textContent = info.join(' · ');
  $('spoken').textContent = [heardSummary(doc), settingsSummary(doc.tags.spoken_settings, live.sent, doc.images || [])]
    .filter(Boolean).join(' · ');
  $('spoken').hidden = !$('spoken').textContent;
  if ($('result').hidden) {
    $('result').hidden = false;
    $('result').scrollIntoView({ block: 'start' });
  }
}

/** Each image's latest preview, swapped into the same <img> so it sharpens in place. */
function showPreviews(images, step, steps) {
  let figures = [...$('images').querySelectorAll('figure.preview')];
  if (figures.length !== images.length) {
    clearImages();
    figures = images.map(previewFigure);
    $('images').replaceChildren(...figures);
  }
  images.forEach((image, index) => {
    const img = figures[index].querySelector('img');
    const previous = img.src;
    img.src = imageUrl(image);
    // The img now fetches its new URL instead (a fetch of the old one not yet begun is dropped).
    if (previous) URL.revokeObjectURL(previous);
    figures[index].querySelector('figcaption').textContent = `preview · step ${step} of ${steps}`;
  });
}

function previewFigure(image) {
  const figure = document.createElement('figure');
  figure.className = 'preview';
  const img = document.createElement('img');
  Object.assign(img, { width: image.width, height: image.height, alt: `preview of image ${image.tags.image + 1}` });
  figure.append(img, document.createElement('figcaption'));
  return figure;
}

/** A blob: URL for an image's base64 bytes (the page's Content-Security-Policy allows blob:);
 * the <img> given it owns it: releaseImageUrl revokes it when the img leaves the page. */
function imageUrl(image) {
  return URL.createObjectURL(base64ToBlob(image.bytes_, image.mime_type));
}

/** What was heard, when the prompt is not that: the words in their language (HEARD_TAG) and
 * Whisper's text, named for what it is: "Whisper's English" when it translated. */
function heardSummary(doc) {
  const tags = doc.tags;
  const parts = [];
  const words = tags[HEARD_TAG];
  if (words !== undefined && words !== doc.text) parts.push(`heard (${tags.language}): “${words}”`);
  const transcript = tags.transcript;
  if (transcript !== undefined && transcript !== doc.text && transcript !== words) {
    const translated = tags.task === 'translate' && tags.language !== 'en';
    parts.push(`${translated ? 'Whisper’s English' : 'heard'}: “${transcript}”`);
  }
  return parts.join(' · ');
}

/** Each setting the form or the speech asked for: the value used (the images' own, once they
 * are there) and where it came from; a form field that overrode speech says what was said. */
function settingsSummary(spoken, sent, images) {
  const fromForm = formSettings(sent);
  const fromSpeech = speechSettings(spoken || {});
  const used = usedSettings(images);
  return Object.entries(SETTING_LABELS)
    .filter(([name]) => name in fromForm || name in fromSpeech)
    .map(([name, label]) => {
      const value = used[name] ?? fromForm[name] ?? fromSpeech[name];
      if (!(name in fromForm)) return `${label} ${value} (from speech)`;
      const overrode = name in fromSpeech && String(fromSpeech[name]) !== String(fromForm[name]);
      return `${label} ${value} (from the form${overrode ? `; speech said ${fromSpeech[name]}` : ''})`;
    })
    .join(' · ');
}

/** The request's parameters by the page's setting names. */
function formSettings(sent) {
  const settings = {};
  for (const name of Object.keys(SETTING_LABELS)) if (sent[name] !== undefined) settings[name] = sent[name];
  if (sent.width) settings.size = `${sent.width} × ${sent.height}`;
  return settings;
}

/** The spoken settings (speech2image/spoken_settings.py) by the page's setting names. */
function speechSettings(spoken) {
  const settings = {};
  for (const name of ['num_images', 'seed', 'num_inference_steps', 'negative_prompt']) {
    if (spoken[name] !== undefined) settings[name] = spoken[name];
  }
  if (spoken.quality && settings.num_inference_steps === undefined) settings.num_inference_steps = spoken.quality;
  if (spoken.orientation) settings.size = spoken.orientation;
  return settings;
}

/** The settings the images were made with, from their tags. */
function usedSettings(images) {
  if (!images.length) return {};
  const [first] = images;
  return {
    num_images: images.length, seed: first.tags.seed, num_inference_steps: first.tags.num_inference_steps,
    guidance_scale: first.tags.guidance_scale, size: `${first.width} × ${first.height}`,
    negative_prompt: first.tags.negative_prompt ?? undefined,
  };
}

/** One generated image with its seed and parameters, and a download link. */
function imageFigure(image) {
  const tags = image.tags;
  const url = imageUrl(image);
  const figure = document.createElement('figure');
  const img = document.createElement('img');
  Object.assign(img, { src: url, width: image.width, height: image.height, alt: tags.prompt });
  const caption = document.createElement('figcaption');
  caption.textContent = [
    `seed ${tags.seed}`, `${tags.num_inference_steps} steps`, `guidance ${tags.guidance_scale}`,
    `${image.width} × ${image.height}`,
    ...(tags.safety_flagged ? ['blacked out: flagged by the safety checker'] : []),
  ].join(' · ');
  caption.title = `model ${tags.model}` + (tags.negative_prompt ? `; negative prompt: ${tags.negative_prompt}` : '');
  const download = document.createElement('a');
  Object.assign(download, { href: url, download: `speech2image-seed${tags.seed}.png`, textContent: 'Download' });
  download.className = 'button';
  caption.append(' ', download);
  figure.append(img, caption);
  return figure;
}

function base64ToBlob(text, type) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
  return new Blob([bytes], { type });
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(',') + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function sendAudio(blob, source) {
  send({ bytes_: await blobToBase64(blob) }, source);
}

// Recording: click to start, click again to stop and send.
async function toggleRecording() {
  if (recording.recorder) {
    recording.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError('recording needs a browser with a microphone, on https:// or localhost; upload a file instead');
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(`the microphone is not available: ${error.message}`);
    return;
  }
  clearOutput();
  const mimeType = RECORDING_TYPES.find((type) => MediaRecorder.isTypeSupported(type));
  const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {});
  const chunks = [];
  recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    stopMeter();
    recording.recorder = null;
    $('record').textContent = '● Record';
    $('record').setAttribute('aria-pressed', 'false');
    sendAudio(new Blob(chunks, { type: recorder.mimeType }), 'recording');
  };
  recording.recorder = recorder;
  recorder.start();
  startMeter(stream);
  $('record').textContent = '■ Stop and send';
  $('record').setAttribute('aria-pressed', 'true');
}

/** Level meter and clock while recording: the peak of each analyser frame. */
function startMeter(stream) {
  recording.context = new AudioContext();
  const analyser = recording.context.createAnalyser();
  analyser.fftSize = 2048;
  recording.context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    $('level').value = samples.reduce((peak, sample) => Math.max(peak, Math.abs(sample)), 0);
    recording.meterFrame = requestAnimationFrame(draw);
  };
  draw();
  $('clock').textContent = '0:00';
  const started = performance.now();
  recording.clock = setInterval(() => {
    const seconds = Math.floor((performance.now() - started) / 1000);
    $('clock').textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
  }, 250);
}

function stopMeter() {
  cancelAnimationFrame(recording.meterFrame);
  clearInterval(recording.clock);
  recording.context.close();
  $('level').value = 0;
}

$('record').addEventListener('click', toggleRecording);
$('file').addEventListener('change', (event) => {
  const [file] = event.target.files;
  event.target.value = ''; // choosing the same file again sends it again
  if (file) sendAudio(file, file.name);
});
$('typed').addEventListener('submit', (event) => {
  event.preventDefault();
  send({ text: $('prompt').value }, 'typed');
});
$('cancel').addEventListener('click', cancel);
$('parameters').addEventListener('input', () => { if (service.info) offerSizes(service.info); });
$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  sessionStorage.setItem(API_KEY_STORAGE, $('api-key').value.trim());
  $('api-key').value = '';
  $('service').textContent = 'Checking the key…';
  checkService();
});
checkService();
