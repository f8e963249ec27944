// The API: every call sends the signed-in key as `Authorization: Bearer` (never in a URL).
// The key lives in this tab's sessionStorage only (gone when the tab closes; "Sign out" clears it).
import { SseParser } from './sse.js'

const KEY = 'autopaint.apiKey'

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(`HTTP ${status} [${code}]: ${detail}`)
    this.status = status
    this.code = code
    this.detail = detail
  }
}

export const auth = {
  get key() { return sessionStorage.getItem(KEY) },
  set(key) { sessionStorage.setItem(KEY, key) },
  clear() { sessionStorage.clear() },
  onUnauthorized: () => {},
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${auth.key || ''}`, ...extra }
}

async function fail(r) {
  let code = 'http_error'
  let detail = r.statusText
  try {
    const body = await r.json()
    code = body.code || code
    detail = body.detail || detail
  } catch { /* not JSON */ }
  if (r.status === 401) auth.onUnauthorized()
  throw new ApiError(r.status, code, detail)
}

// Paths are relative ('v1/jobs'): resolved against the page (/viewer), so a path prefix works.
export async function api(path, { method = 'GET', json } = {}) {
  const init = { method, headers: headers(), cache: 'no-store' }
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(json)
  }
  const r = await fetch(path, init)
  if (!r.ok) await fail(r)
  return r.status === 204 ? null : r.json()
}

// Reads a server-sent event stream (`GET path`, text/event-stream) with fetch() and a stream reader:
// EventSource cannot send the Authorization header. Calls onOpen() once the answer is a 200 event
// stream, onEvent(type, data) per event, onRetry(ms) for the server's `retry:`; resolves when the
// server ends the stream. Rejects with an ApiError: the server's answer when it is not a 200 event
// stream (401 also signs out, as for any call), status 0 for a network error or when nothing, not
// even a keep-alive comment, arrived for `idleMs` (a half-open connection); the caller's `signal`
// aborting rejects with its AbortError.
export async function events(path, { onEvent, onOpen = () => {}, onRetry = () => {}, signal, idleMs = 45000 } = {}) {
  const ctrl = new AbortController()
  const stop = () => ctrl.abort()
  if (signal) {
    if (signal.aborted) throw new DOMException('aborted', 'AbortError')
    signal.addEventListener('abort', stop, { once: true })
  }
  let idle = false
  let timer
  const arm = () => {
    clearTimeout(timer)
    timer = setTimeout(() => { idle = true; ctrl.abort() }, idleMs)
  }
  try {
    arm()
    const r = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }), cache: 'no-store', signal: ctrl.signal })
    if (!r.ok) await fail(r)
    const type = r.headers.get('Content-Type') || ''
    if (r.status !== 200 || !type.startsWith('text/event-stream') || !r.body) {
      throw new ApiError(r.status, 'not_an_event_stream', `expected a text/event-stream, got ${r.status} ${type}`)
    }
    onOpen()
    const parser = new SseParser({ onEvent, onRetry })
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader()
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      arm()
      parser.push(value)
    }
  } catch (err) {
    if (signal && signal.aborted) throw err
    if (err instanceof ApiError) throw err
    throw new ApiError(0, idle ? 'stream_idle' : 'network_error',
      idle ? `the event stream sent nothing for ${idleMs / 1000} s` : `the event stream failed: ${err.message || err}`)
  } finally {
    clearTimeout(timer)
    if (signal) signal.removeEventListener('abort', stop)
  }
}

export async function bytes(path) {
  const r = await fetch(path, { headers: headers(), cache: 'no-store' })
  if (!r.ok) await fail(r)
  return r.arrayBuffer()
}

export async function saveAs(path, filename) {
  const r = await fetch(path, { headers: headers(), cache: 'no-store' })
  if (!r.ok) await fail(r)
  const url = URL.createObjectURL(await r.blob())
  const a = Object.assign(document.createElement('a'), { href: url, download: filename })
  document.body.append(a)
  a.click()
  a.remove()
  setTimeout(() => URL.revokeObjectURL(url), 10000)
}

// Multipart upload with progress (XMLHttpRequest: fetch has no upload progress).
export function upload(form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest()
    xhr.open('POST', 'v1/jobs')
    for (const [k, v] of Object.entries(headers({ 'Idempotency-Key': crypto.randomUUID() }))) {
      xhr.setRequestHeader(k, v)
    }
    xhr.responseType = 'json'
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total)
    xhr.onerror = () => reject(new ApiError(0, 'network_error', 'the upload failed (network)'))
    xhr.onload = () => {
      const body = xhr.response || {}
      if (xhr.status === 202) return resolve(body)
      if (xhr.status === 401) auth.onUnauthorized()
      reject(new ApiError(xhr.status, body.code || 'http_error', body.detail || xhr.statusText))
    }
    xhr.send(form)
  })
}
