// speech2image web page: record, upload or type a prompt; POST it to /api/<endpoint>; show the
// transcript and the images. Plain browser APIs only: MediaRecorder, Web Audio, fetch.
'use strict';

const NUMBER_PARAMETERS = ['num_images', 'num_inference_steps', 'guidance_scale', 'seed'];
const TEXT_PARAMETERS = ['task', 'language', 'negative_prompt'];
// Opus in WebM (Chrome, Firefox) or Ogg; MP4 for Safari. The server decodes all three with PyAV.
const RECORDING_TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4'];

const $ = (id) => document.getElementById(id);
const recording = { recorder: null, context: null, meterFrame: 0, clock: 0 };
let imageUrls = [];
let busyTimer = 0;

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

/** Show or hide the waiting indicator, and lock the inputs meanwhile. */
function setBusy(message) {
  clearInterval(busyTimer);
  $('status').hidden = !message;
  for (const id of ['record', 'file', 'prompt', 'generate']) $(id).disabled = Boolean(message);
  if (!message) return;
  const started = performance.now();
  const tick = () => {
    $('status-text').textContent = `${message} ${Math.round((performance.now() - started) / 1000)} s`;
  };
  tick();
  busyTimer = setInterval(tick, 1000);
  $('status').scrollIntoView({ block: 'nearest' });
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
  $('error').scrollIntoView({ block: 'nearest' });
}

function clearOutput() {
  $('error').hidden = true;
  $('result').hidden = true;
  $('images').replaceChildren();
  imageUrls.forEach((url) => URL.revokeObjectURL(url));
  imageUrls = [];
}

/** POST one document to the Flow through this page's server; show what comes back. */
async function send(endpoint, doc, source) {
  clearOutput();
  setBusy(endpoint === 'generate' ? 'Painting…' : 'Listening and painting…');
  try {
    const response = await fetch(`/api/${endpoint}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ data: [doc], parameters: requestParameters() }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(body.error || `the server answered ${response.status} ${response.statusText}`);
    }
    showResult(body.data[0], source);
  } catch (error) {
    const message = error instanceof TypeError ? `cannot reach the server: ${error.message}` : error.message;
    showError(message);
  } finally {
    setBusy('');
  }
}

function showResult(doc, source) {
  $('result-title').textContent = source === 'typed' ? 'Prompt' : 'Transcript';
  $('transcript').textContent = doc.text;
  const info = [source === 'typed' ? 'typed' : `from ${source}`];
  if (doc.tags.language) {
    const probability = doc.tags.language_probability;
    info.push(`language ${doc.tags.language}` + (probability ? ` (${Math.round(probability * 100)}%)` : ''));
  }
  if (doc.tags.audio_seconds) info.push(`${Number(doc.tags.audio_seconds).toFixed(1)} s of audio`);
  $('transcript-info').textContent = info.join(' · ');
  $('spoken').textContent = spokenSummary(doc.tags);
  $('spoken').hidden = !$('spoken').textContent;
  $('images').replaceChildren(...doc.matches.map(imageFigure));
  $('result').hidden = false;
  $('result').scrollIntoView({ block: 'start' });
}

/** What Whisper heard, when the prompt is not that, and the settings taken from speech. */
function spokenSummary(tags) {
  const parts = [];
  if (tags.transcript !== undefined && tags.transcript !== $('transcript').textContent) {
    parts.push(`heard “${tags.transcript}”`);
  }
  const spoken = Object.entries(tags.spoken_settings || {});
  if (spoken.length) parts.push('from speech: ' + spoken.map(([name, value]) => `${name} ${value}`).join(', '));
  return parts.join(' · ');
}

/** One generated image with its seed and parameters, and a download link. */
function imageFigure(image) {
  const tags = image.tags;
  const url = URL.createObjectURL(base64ToBlob(image.bytes_, image.mime_type));
  imageUrls.push(url);
  const figure = document.createElement('figure');
  const img = document.createElement('img');
  Object.assign(img, { src: url, width: image.width, height: image.height, alt: tags.prompt });
  const caption = document.createElement('figcaption');
  caption.textContent = [
    `seed ${tags.seed}`, `${tags.num_inference_steps} steps`, `guidance ${tags.guidance_scale}`,
    `${image.width} × ${image.height}`,
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
  send('default', { bytes_: await blobToBase64(blob) }, source);
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
  send('generate', { text: $('prompt').value }, 'typed');
});
