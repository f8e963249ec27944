// autopaint viewer: sign in with an API key, upload a case, follow it, list jobs and cohorts,
// open a result (result.js). Hash routes: #/jobs, #/new, #/cohorts, #/cohort/<id>, #/job/<id>.
import { api, ApiError, auth, events, saveAs, upload } from './api.js'
import { badge, duration, errorBox, h, mount, progressBar, when } from './dom.js'
import { showResult } from './result.js'

const app = document.getElementById('app')
const TERMINAL = ['succeeded', 'failed', 'cancelled']
const STREAM_RETRY_MS = 2000  // before reconnecting a stream that ended unfinished (the server's `retry:` wins)
const POLL_MIN_MS = 1000  // without the stream: poll after 1, 2, 4 … s
const POLL_MAX_MS = 15000
const COHORTS = 'autopaint.cohorts'
let cleanup = []  // timers and viewers of the current view, undone on navigation

function onLeave(fn) { cleanup.push(fn) }
function every(ms, fn) {
  let stop = false
  let timer
  const tick = async () => {
    try { await fn() } catch (e) { if (!(e instanceof ApiError)) console.error(e) }
    if (!stop) timer = setTimeout(tick, ms)
  }
  onLeave(() => { stop = true; clearTimeout(timer) })
  return tick()
}

// ---------------------------------------------------------------- sign in / header

function signIn(message) {
  document.getElementById('nav').hidden = true
  mount(document.getElementById('who'))
  const input = h('input', { type: 'password', id: 'api-key', name: 'api-key', autocomplete: 'off',
    placeholder: 'ap_…', required: true, spellcheck: 'false' })
  const status = h('div')
  const form = h('form', { class: 'card narrow', id: 'signin', onsubmit: async (e) => {
    e.preventDefault()
    auth.set(input.value.trim())
    try {
      await api('v1/jobs?limit=1')
      location.hash = '#/jobs'
      route()
    } catch (err) {
      auth.clear()
      mount(status, errorBox(err))
    }
  } },
  h('h1', { text: 'Sign in' }),
  h('p', { class: 'muted', text: 'Enter your API key. It is kept in this browser tab only and sent with each request.' }),
  h('label', { for: 'api-key', text: 'API key' }), input,
  h('button', { type: 'submit', class: 'primary', text: 'Sign in' }), status)
  mount(app, message ? errorBox(message) : null, form)
  input.focus()
}

function header(active) {
  const nav = document.getElementById('nav')
  nav.hidden = false
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.nav === active)
  const key = auth.key || ''
  mount(document.getElementById('who'), h('span', { class: 'muted', text: `key ${key.slice(0, 9)}…` }),
    h('button', { class: 'link', id: 'signout', text: 'Sign out', onclick: () => { auth.clear(); route() } }))
}

auth.onUnauthorized = () => { auth.clear(); setTimeout(() => signIn('Your API key was refused (invalid or revoked).'), 0) }

// ---------------------------------------------------------------- jobs list

function progressText(job) {
  const p = job.progress || {}
  if (job.state === 'queued') return job.queue_position ? `queued · #${job.queue_position}` : 'queued'
  if (job.state === 'succeeded' && job.started_at && job.finished_at) {
    return `done in ${duration((new Date(job.finished_at) - new Date(job.started_at)) / 1000)}`
  }
  if (job.state !== 'running') return job.error_code || ''
  return p.total ? `${p.stage} ${p.done}/${p.total} ${p.unit}` : p.stage
}

function jobsTable(jobs) {
  if (!jobs.length) return h('p', { class: 'empty', text: 'No jobs yet. Submit a case with “New case”.' })
  return h('table', { class: 'list', id: 'jobs' },
    h('thead', {}, h('tr', {}, ['Case', 'State', 'Progress', 'Lesions', 'Submitted', 'Job id'].map((t) => h('th', { text: t })))),
    h('tbody', {}, jobs.map((j) => h('tr', { class: 'click', data: { job: j.id }, onclick: () => { location.hash = `#/job/${j.id}` } },
      h('td', { text: j.case_name || '(unnamed)' }), h('td', {}, badge(j.state)), h('td', { text: progressText(j) }),
      h('td', { text: j.manifest && j.manifest.lesions !== undefined ? String(j.manifest.lesions) : '' }),
      h('td', { text: when(j.created_at) }), h('td', { class: 'mono', text: j.id.slice(0, 8) })))))
}

function jobsView() {
  header('jobs')
  const box = h('div')
  mount(app, h('section', { class: 'card' }, h('div', { class: 'row' }, h('h1', { text: 'Jobs' }),
    h('a', { class: 'button primary', href: '#/new', text: 'New case' })), box))
  return every(3000, async () => {
    const page = await api('v1/jobs?limit=100')
    mount(box, jobsTable(page.items), page.total > page.items.length
      ? h('p', { class: 'muted', text: `${page.items.length} of ${page.total} shown (newest first)` }) : null)
  })
}

// ---------------------------------------------------------------- cohorts

function knownCohorts() { return JSON.parse(sessionStorage.getItem(COHORTS) || '[]') }
function rememberCohort(id) { sessionStorage.setItem(COHORTS, JSON.stringify([...new Set([...knownCohorts(), id])])) }

// There is no "list cohorts" route: the cohorts are those of the key's jobs plus the ones made here.
async function listCohorts() {
  const page = await api('v1/jobs?limit=1000')
  const ids = [...new Set([...knownCohorts(), ...page.items.map((j) => j.cohort_id).filter(Boolean)])]
  const found = await Promise.all(ids.map((id) => api(`v1/cohorts/${id}`).catch(() => null)))
  return found.filter(Boolean).sort((a, b) => b.created_at.localeCompare(a.created_at))
}

function cohortsView() {
  header('cohorts')
  const box = h('div')
  const name = h('input', { name: 'cohort-name', placeholder: 'cohort name', required: true, maxlength: 200 })
  const msg = h('div')
  const form = h('form', { class: 'inline', id: 'new-cohort', onsubmit: async (e) => {
    e.preventDefault()
    try {
      const c = await api('v1/cohorts', { method: 'POST', json: { name: name.value.trim() } })
      rememberCohort(c.id)
      name.value = ''
      refresh()
    } catch (err) { mount(msg, errorBox(err)) }
  } }, name, h('button', { type: 'submit', text: 'Create cohort' }))
  const refresh = async () => {
    const cohorts = await listCohorts()
    mount(box, cohorts.length ? h('table', { class: 'list', id: 'cohorts' },
      h('thead', {}, h('tr', {}, ['Cohort', 'Cases', 'Finished', 'States', 'Created'].map((t) => h('th', { text: t })))),
      h('tbody', {}, cohorts.map((c) => h('tr', { class: 'click', onclick: () => { location.hash = `#/cohort/${c.id}` } },
        h('td', { text: c.name }), h('td', { text: String(c.cases.length) }),
        h('td', {}, progressBar(c.progress, 'cohort progress')),
        h('td', { text: Object.entries(c.counts).map(([k, v]) => `${v} ${k}`).join(', ') }),
        h('td', { text: when(c.created_at) })))))
      : h('p', { class: 'empty', text: 'No cohorts yet.' }))
  }
  mount(app, h('section', { class: 'card' }, h('h1', { text: 'Cohorts' }), form, msg, box))
  return every(5000, refresh)
}

function cohortView(id) {
  header('cohorts')
  const box = h('div')
  mount(app, h('section', { class: 'card' }, box))
  return every(3000, async () => {
    let c
    try { c = await api(`v1/cohorts/${id}`) } catch (err) { mount(box, errorBox(err)); return }
    const dl = (name, file) => h('button', { text: name, onclick: () => saveAs(`v1/cohorts/${id}/${file}`, `${c.name}-${file}`) })
    mount(box, h('div', { class: 'row' }, h('h1', { text: `Cohort: ${c.name}` }), h('div', {}, dl('lesions.csv', 'lesions.csv'), dl('metrics.csv', 'metrics.csv'))),
      progressBar(c.progress, 'cohort progress'),
      h('p', { class: 'muted', text: Object.entries(c.counts).map(([k, v]) => `${v} ${k}`).join(' · ') || 'no cases yet' }),
      c.cases.length ? h('table', { class: 'list' },
        h('thead', {}, h('tr', {}, ['Case', 'State', 'Stage', 'Done', 'Error'].map((t) => h('th', { text: t })))),
        h('tbody', {}, c.cases.map((k) => h('tr', { class: 'click', onclick: () => { location.hash = `#/job/${k.job_id}` } },
          h('td', { text: k.case_name || k.job_id.slice(0, 8) }), h('td', {}, badge(k.state)), h('td', { text: k.stage }),
          h('td', { text: k.fraction === null ? '–' : `${Math.round(100 * k.fraction)} %` }), h('td', { text: k.error_code || '' })))))
        : h('p', { class: 'empty', text: 'Add cases to this cohort from “New case”.' }))
  })
}

// ---------------------------------------------------------------- upload

function field(label, input, hint) {
  return h('div', { class: 'field' }, h('label', { for: input.id, text: label }), input, hint ? h('small', { class: 'muted', text: hint }) : null)
}

async function uploadView() {
  header('new')
  const file = (id, accept = '.nii,.nii.gz,.gz') => h('input', { type: 'file', id, name: id, accept })
  const ct = file('ct'); const pet = file('pet'); const label = file('label'); const organ = file('organ_mask')
  ct.required = true
  const select = (id, options) => h('select', { id, name: id }, options.map(([v, t]) => h('option', { value: v, text: t })))
  const model = select('model', [['', 'server default']])
  const preset = select('preset', [['', 'the model’s preset'], ['thorax', 'thorax (lungs)'], ['headneck', 'head & neck'], ['custom', 'custom (body)']])
  const mode = select('mode', [['fast', 'fast'], ['exact', 'exact (slower)']])
  const cohort = select('cohort', [['', 'none']])
  const caseName = h('input', { id: 'case_name', name: 'case_name', maxlength: 200, placeholder: 'e.g. patient-007 baseline' })
  const isSuv = h('input', { type: 'checkbox', id: 'suv_already', name: 'suv_already', checked: true })
  const num = (id, placeholder, step = 'any') => h('input', { type: 'number', id, name: id, min: 0, step, placeholder })
  const weight = num('weight_kg', 'kg'); const dose = num('dose_mbq', 'MBq'); const delay = num('delay_min', 'min')
  const half = num('half_life_s', '6586.2 (F-18)')
  const bq = h('div', { class: 'suv-bq', hidden: true },
    field('Body weight (kg)', weight), field('Injected dose (MBq)', dose),
    field('Injection → scan start (min)', delay), field('Half-life (s)', half, 'blank = F-18'))
  isSuv.addEventListener('change', () => {
    bq.hidden = isSuv.checked
    for (const el of [weight, dose, delay]) el.required = !isSuv.checked
  })
  const status = h('div', { id: 'upload-status' })
  const submit = h('button', { type: 'submit', class: 'primary', id: 'submit', text: 'Upload and start' })
  const form = h('form', { class: 'card', id: 'upload', onsubmit: async (e) => {
    e.preventDefault()
    const params = { mode: mode.value, suv_already: isSuv.checked }
    if (preset.value) params.preset = preset.value
    if (model.value) params.model = model.value
    if (!isSuv.checked) {
      Object.assign(params, { weight_kg: +weight.value, injected_dose_bq: +dose.value * 1e6, delay_s: +delay.value * 60 })
      if (half.value) params.half_life_s = +half.value
    }
    const fd = new FormData()
    for (const [role, el] of [['ct', ct], ['pet', pet], ['label', label], ['organ_mask', organ]]) {
      if (el.files.length) fd.append(role, el.files[0], el.files[0].name)
    }
    fd.append('params', JSON.stringify(params))
    if (cohort.value) fd.append('cohort_id', cohort.value)
    if (caseName.value.trim()) fd.append('case_name', caseName.value.trim())
    submit.disabled = true
    const text = h('span', { text: 'Uploading…' })
    mount(status, text, progressBar(0, 'upload'))
    try {
      const job = await upload(fd, (f) => mount(status, text, progressBar(f, 'upload')))
      location.hash = `#/job/${job.id}`
    } catch (err) {
      submit.disabled = false
      mount(status, errorBox(err))
    }
  } },
  h('h1', { text: 'New case' }),
  h('fieldset', {}, h('legend', { text: 'Images (NIfTI)' }),
    field('CT', ct, 'HU'), field('PET', pet, 'SUV or Bq/mL'),
    field('Tumour label (optional)', label, 'ground truth: Dice etc. in the report'),
    field('Organ mask (optional)', organ, 'else the preset’s organs')),
  h('fieldset', {}, h('legend', { text: 'PET units' }),
    h('label', { class: 'check' }, isSuv, ' PET is already in SUV (body weight)'), bq),
  h('fieldset', {}, h('legend', { text: 'Parameters' }),
    field('Preset', preset), field('Mode', mode), field('Model', model), field('Case name', caseName), field('Cohort', cohort)),
  submit, status)
  mount(app, form)
  const [models, cohorts] = await Promise.all([api('v1/models').catch(() => []), listCohorts().catch(() => [])])
  for (const m of models.filter((x) => x.has_weights)) {
    model.append(h('option', { value: m.name, text: `${m.name}${m.default ? ' (default)' : ''}` }))
  }
  for (const c of cohorts) cohort.append(h('option', { value: c.id, text: c.name }))
}

// ---------------------------------------------------------------- one job: progress, then result

function progressPanel(job, feed) {
  const p = job.progress || {}
  const facts = [
    ['State', badge(job.state)],
    ['Stage', p.stage || '–'],
    ['Progress', p.total ? `${p.done} / ${p.total} ${p.unit}` : '–'],
    ['Circles', p.circles_total ? `${p.circles_done} / ${p.circles_total}` : '–'],
    ['Queue position', job.queue_position ? `#${job.queue_position}` : '–'],
    ['ETA', job.eta_s !== null && job.eta_s !== undefined ? `≈ ${duration(job.eta_s)}` : '–'],
    ['Attempt', `${job.attempts} of ${job.max_attempts}`],
  ]
  return h('div', { id: 'progress', data: { state: job.state, stage: p.stage || '', feed: feed || '' } },
    progressBar(job.state === 'succeeded' ? 1 : p.fraction, 'job progress'),
    h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)])),
    TERMINAL.includes(job.state) ? null : h('p', { class: 'muted', text: 'The result opens here when the job has finished; you may leave this page and come back from “Jobs”.' }))
}

// A progress event's fields over the job (the event has no attempts, case name, params…).
function withProgress(job, ev) {
  const { state, queue_position: queuePosition, eta_s: eta, ...progress } = ev
  return { ...job, state, queue_position: queuePosition, eta_s: eta, progress: { ...job.progress, ...progress } }
}

// Follows job `id` until it is terminal: one GET v1/jobs/{id}, then its event stream
// (v1/jobs/{id}/events; `progress` events merged into the job, the final `state` event is the whole
// job). A stream that ends unfinished (its hour is up, a restart) is reopened after `retry`; when the
// stream cannot be had (a network error, any non-200 answer: 429, 503, a proxy…) the job is polled
// with backoff (1, 2, 4 … 15 s) and the stream tried again after each poll. onJob(job, feed) on every
// change, `feed` 'stream' or 'poll'; onError(err) for a 401/403/404 or the stream's `error` event
// (the job was deleted), which end it. Leaving the view aborts it.
function followJob(id, onJob, onError) {
  const ctrl = new AbortController()
  onLeave(() => ctrl.abort())
  const sleep = (ms) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    ctrl.signal.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
  })
  const fatal = (err) => err instanceof ApiError && [401, 403, 404].includes(err.status)
  let job = null
  let feed = 'poll'
  const update = (next) => { job = next; onJob(job, feed); return TERMINAL.includes(job.state) }
  const poll = async () => update(await api(`v1/jobs/${id}`))

  const run = async () => {
    let retry = STREAM_RETRY_MS
    let delay = 0
    const backoff = () => { delay = delay ? Math.min(POLL_MAX_MS, 2 * delay) : POLL_MIN_MS; return delay }
    while (!ctrl.signal.aborted) {
      if (!job) {  // first the whole job (the events carry its progress only)
        try {
          if (await poll()) return
        } catch (err) {
          onError(err)
          if (fatal(err)) return
          await sleep(backoff())
          continue
        }
      }
      let opened = false
      let done = false
      try {
        await events(`v1/jobs/${id}/events`, {
          signal: ctrl.signal,
          onOpen: () => { opened = true; delay = 0; feed = 'stream' },
          onRetry: (ms) => { retry = Math.max(500, ms) },
          onEvent: (type, data) => {
            if (done) return
            const ev = JSON.parse(data)
            if (type === 'state') {
              done = update(ev)
            } else if (type === 'error') {
              done = true
              onError(ev)
            } else if (type === 'progress' && job && !TERMINAL.includes(ev.state)) {  // the `state` event ends it
              const started = ev.state === 'running' && job.state !== 'running'
              update(withProgress(job, ev))
              // a (re)start changes what the events do not carry (attempt, started_at): read them once
              if (started) {
                api(`v1/jobs/${id}`).then((j) => {
                  if (!done && !TERMINAL.includes(job.state) && !TERMINAL.includes(j.state)) {
                    update({ ...job, attempts: j.attempts, max_attempts: j.max_attempts, started_at: j.started_at })
                  }
                }).catch(() => {})
              }
            }
          },
        })
      } catch (err) {
        if (ctrl.signal.aborted) return
        if (fatal(err)) { onError(err); return }
      }
      if (done || ctrl.signal.aborted) return
      feed = 'poll'
      if (opened) { await sleep(retry); continue }  // it worked and ended: reopen it
      backoff()
      try {
        if (await poll()) return
      } catch (err) {
        if (fatal(err)) { onError(err); return }
      }
      await sleep(delay)
    }
  }
  return run().catch((e) => console.error(e))
}

function jobView(id) {
  header('jobs')
  const title = h('h1', { text: 'Job' })
  const actions = h('div')
  const body = h('div')
  mount(app, h('section', { class: 'card' }, h('div', { class: 'row' }, h('div', { class: 'titles' }, title), actions), body))
  let shown = false
  const render = async (job, feed) => {
    if (shown) return
    title.textContent = job.case_name ? `Case ${job.case_name}` : `Job ${job.id.slice(0, 8)}`
    mount(actions, TERMINAL.includes(job.state) ? null : h('button', { id: 'cancel', text: 'Cancel job', onclick: async () => {
      await api(`v1/jobs/${id}/cancel`, { method: 'POST' })
    } }))
    if (job.state === 'succeeded') {
      shown = true
      title.after(h('p', { class: 'muted sub', text: `model ${job.model_name || '–'} · finished ${when(job.finished_at)} · job ${job.id.slice(0, 8)}` }))
      app.classList.add('wide')
      onLeave(() => app.classList.remove('wide'))
      onLeave(await showResult(body, job))
    } else if (job.state === 'failed' || job.state === 'cancelled') {
      shown = true
      mount(body, progressPanel(job, feed), errorBox({ code: job.error_code || job.state, detail: job.error_message || `the job was ${job.state}` }))
    } else {
      mount(body, progressPanel(job, feed))
    }
  }
  return followJob(id, (job, feed) => { render(job, feed).catch((e) => console.error(e)) },
    (err) => { if (!shown) mount(body, errorBox(err)) })
}

// ---------------------------------------------------------------- routing

function route() {
  for (const fn of cleanup.splice(0)) fn()
  if (!auth.key) return signIn()
  const [, view, id] = (location.hash || '#/jobs').split('/')
  if (view === 'job' && id) return jobView(id)
  if (view === 'cohort' && id) return cohortView(id)
  if (view === 'cohorts') return cohortsView()
  if (view === 'new') return uploadView()
  return jobsView()
}

window.addEventListener('hashchange', route)
route()
