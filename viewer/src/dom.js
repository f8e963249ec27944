// Tiny DOM helpers: elements are built with textContent only (no innerHTML with data).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'class') el.className = v
    else if (k === 'text') el.textContent = v
    else if (k === 'data') Object.assign(el.dataset, v)
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k in el && typeof v !== 'string') el[k] = v
    else el.setAttribute(k, v === true ? '' : v)
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue
    el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return el
}

export function mount(parent, ...children) {
  parent.replaceChildren(...children.flat(Infinity).filter(Boolean))
  return parent
}

export function fmt(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? '–' : Number(x).toFixed(digits)
}

export function duration(s) {
  if (s === null || s === undefined) return '–'
  if (s < 90) return `${Math.round(s)} s`
  if (s < 5400) return `${Math.round(s / 60)} min`
  return `${(s / 3600).toFixed(1)} h`
}

export function when(iso) {
  if (!iso) return '–'
  const d = new Date(iso)
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'short' })
}

export function badge(state) {
  return h('span', { class: `badge ${state}`, text: state })
}

export function errorBox(err) {
  const code = err && err.code ? `[${err.code}] ` : ''
  return h('div', { class: 'alert', role: 'alert' }, code + (err && err.detail ? err.detail : String(err)))
}

export function progressBar(fraction, label) {
  const bar = h('div', { class: 'bar' })
  bar.style.width = `${Math.round(100 * Math.max(0, Math.min(1, fraction || 0)))}%`
  return h('div', { class: 'progress', role: 'progressbar', 'aria-label': label || 'progress',
    'aria-valuenow': Math.round(100 * (fraction || 0)) }, bar)
}
