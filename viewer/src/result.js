// One finished job: CT with PET fused, the residual as a heat overlay, the mask outline (NiiVue
// drawing layer: faint fill, solid rim), the lesion table (click -> crosshair on the centroid), the
// threshold slider (POST /v1/jobs/{id}/threshold, mask redrawn) and scan <-> inpainted toggle.
// Volumes are fetched with the bearer key and handed to NiiVue as ArrayBuffers.
import { cmapper, Niivue, NVImage, SHOW_RENDER, SLICE_TYPE } from '@niivue/niivue'
import { api, bytes, saveAs } from './api.js'
import { errorBox, fmt, h, mount } from './dom.js'

const F18_HALF_LIFE_S = 6586.2
const CT_WINDOWS = { 'soft tissue': [-160, 240], lung: [-1350, 150], bone: [-700, 1300] }
const OUTLINE_RGB = [0, 230, 64]
const LAYERS = {
  pet: { colormap: 'hot', opacity: 0.55, label: 'PET (SUV)' },
  residual: { colormap: 'electric_blue', opacity: 0.9, label: 'Residual (scan − inpainted)', range: [0.05, 0.6] },
}
const VIEWS = { All: SLICE_TYPE.MULTIPLANAR, Axial: SLICE_TYPE.AXIAL, Coronal: SLICE_TYPE.CORONAL, Sagittal: SLICE_TYPE.SAGITTAL }
const HERO = 0.62  // "All": a large axial slice, the three planes beside it

// SUV = Bq/mL x weight (g) / decay-corrected dose (Bq); 1 when the PET is SUV already.
function suvFactor(params) {
  if (params.suv_already !== false) return 1
  const decayed = params.injected_dose_bq * 2 ** (-params.delay_s / (params.half_life_s || F18_HALF_LIFE_S))
  return (params.weight_kg * 1000) / decayed
}

async function volume(buffer, name, opts = {}) {
  const img = await NVImage.loadFromUrl({ url: name, name, buffer, colormap: opts.colormap || 'gray', opacity: opts.opacity ?? 1 })
  if (opts.range) [img.cal_min, img.cal_max] = opts.range
  return img
}

function swatch(colormap) {
  const lut = cmapper.colormap(colormap)
  const stops = []
  for (let i = 0; i < 256; i += 51) stops.push(`rgb(${lut[4 * i]},${lut[4 * i + 1]},${lut[4 * i + 2]})`)
  const el = h('span', { class: 'swatch' })
  el.style.background = `linear-gradient(90deg, ${stops.join(', ')})`
  return el
}

export async function showResult(container, job) {
  const canvas = h('canvas', { id: 'gl' })
  const loc = h('div', { class: 'loc', id: 'loc' })
  const tag = h('div', { class: 'mode-tag', id: 'mode-tag', text: 'Scan' })
  const panel = h('aside', { class: 'panel' }, h('p', { class: 'muted', text: 'Loading images…' }))
  mount(container, h('div', { class: 'result' }, h('div', { class: 'viewport' }, canvas, tag, loc), panel))

  const names = new Set((await api(`v1/jobs/${job.id}/results`)).artifacts.map((a) => a.name))
  const get = (path) => bytes(path)
  const want = {
    ct: job.inputs.ct ? get(`v1/jobs/${job.id}/inputs/ct`) : null,
    pet: job.inputs.pet ? get(`v1/jobs/${job.id}/inputs/pet`) : null,
  }
  for (const n of ['mask', 'residual', 'inpainted_ct', 'inpainted_pet']) {
    want[n] = names.has(`${n}.nii.gz`) ? get(`v1/jobs/${job.id}/results/${n}.nii.gz`) : null
  }
  const lesionsP = names.has('lesions.json') ? api(`v1/jobs/${job.id}/results/lesions.json`) : Promise.resolve([])
  const reportP = names.has('report.json') ? api(`v1/jobs/${job.id}/results/report.json`).catch(() => null) : Promise.resolve(null)
  let buf
  try {
    buf = Object.fromEntries(await Promise.all(Object.entries(want).map(async ([k, p]) => [k, p ? await p : null])))
  } catch (err) {
    mount(panel, errorBox(err))
    return () => {}
  }

  const nv = new Niivue({
    backColor: [0, 0, 0, 1], crosshairColor: [0.25, 0.75, 1, 0.85], crosshairWidth: 1,
    isRadiologicalConvention: true, multiplanarShowRender: SHOW_RENDER.NEVER, dragAndDropEnabled: false,
    show3Dcrosshair: false, textHeight: 0.045, loadingText: '', logLevel: 'error', heroImageFraction: HERO,
    heroSliceType: SLICE_TYPE.AXIAL,
  })
  try {
    await nv.attachToCanvas(canvas)
  } catch (err) {
    mount(panel, errorBox({ code: 'webgl2_unavailable', detail: 'this browser cannot show the images (WebGL2 is needed)' }))
    return () => {}
  }
  const factor = suvFactor(job.params || {})
  const state = { healthy: false, suvMax: 8, ctWindow: 'soft tissue', show: { pet: true, residual: false, outline: true } }
  const base = buf.ct ? 'ct' : 'pet'
  const img = {
    scan: await volume(buf[base], `${base}.nii.gz`, { range: base === 'ct' ? CT_WINDOWS[state.ctWindow] : [0, state.suvMax / factor] }),
    pet: buf.pet && base === 'ct' ? await volume(buf.pet, 'pet.nii.gz', { ...LAYERS.pet, range: [0, state.suvMax / factor] }) : null,
    residual: buf.residual ? await volume(buf.residual, 'residual.nii.gz', { ...LAYERS.residual }) : null,
    healthyScan: buf[`inpainted_${base}`] ? await volume(buf[`inpainted_${base}`], `inpainted_${base}.nii.gz`) : null,
    healthyPet: buf.inpainted_pet && base === 'ct' ? await volume(buf.inpainted_pet, 'inpainted_pet.nii.gz', { ...LAYERS.pet, range: [0, state.suvMax] }) : null,
  }
  if (img.healthyScan) [img.healthyScan.cal_min, img.healthyScan.cal_max] = [img.scan.cal_min, img.scan.cal_max]
  const bg = () => (state.healthy && img.healthyScan ? img.healthyScan : img.scan)
  const petLayer = () => (state.healthy && img.healthyPet ? img.healthyPet : img.pet)
  // Volumes and opacities are set directly, then the GPU layers are rebuilt once
  // (each NiiVue setVolume/setOpacity call rebuilds every layer: slow with software WebGL).
  function layout() {
    const list = [bg(), petLayer(), img.residual, img.outline].filter(Boolean)
    const pos = nv.volumes.length ? [...nv.scene.crosshairPos] : null
    nv.volumes = list
    nv.back = list[0]
    nv.overlays = list.slice(1)
    if (pos) nv.scene.crosshairPos = pos
    styleLayers()
  }
  function styleLayers() {
    const p = petLayer()
    if (p) p.opacity = state.show.pet ? LAYERS.pet.opacity : 0
    if (img.residual) img.residual.opacity = state.show.residual ? LAYERS.residual.opacity : 0
    if (img.outline) img.outline.opacity = state.show.outline ? 1 : 0
    nv.updateGLVolume()
  }
  // The outline: mask voxels with a face neighbour outside the mask (a label image drawn on top).
  async function loadMask(buffer) {
    const mask = await NVImage.loadFromUrl({ url: 'mask.nii.gz', name: 'mask.nii.gz', buffer })
    const [, nx, ny, nz] = mask.hdr.dims
    const m = mask.img
    const rim = new Uint8Array(m.length)
    const sxy = nx * ny
    let n = 0
    for (let z = 0, i = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        for (let x = 0; x < nx; x++, i++) {
          if (!m[i]) continue
          n++
          rim[i] = x === 0 || y === 0 || z === 0 || x === nx - 1 || y === ny - 1 || z === nz - 1 ||
            !m[i - 1] || !m[i + 1] || !m[i - nx] || !m[i + nx] || !m[i - sxy] || !m[i + sxy] ? 1 : 0
        }
      }
    }
    mask.img = rim
    mask.setColormapLabel({ R: [0, OUTLINE_RGB[0]], G: [0, OUTLINE_RGB[1]], B: [0, OUTLINE_RGB[2]], A: [0, 255], I: [0, 1], labels: ['', 'mask'] })
    state.maskVoxels = n
    img.outline = mask
    layout()
  }
  if (buf.mask) await loadMask(buf.mask)
  else layout()

  // ---- location readout
  function readout() {
    const mm = nv.frac2mm(nv.scene.crosshairPos)
    const val = (v) => { if (!v) return null; const x = v.mm2vox([mm[0], mm[1], mm[2]]); return v.getValue(x[0], x[1], x[2]) }
    const parts = [`${fmt(mm[0], 1)}, ${fmt(mm[1], 1)}, ${fmt(mm[2], 1)} mm`]
    if (base === 'ct') parts.push(`CT ${fmt(val(bg()), 0)} HU`)
    const p = petLayer() || (base === 'pet' ? bg() : null)
    if (p) parts.push(`PET ${fmt(val(p) * (p === img.pet || p === img.scan ? factor : 1), 2)} SUV`)
    if (img.residual) parts.push(`residual ${fmt(val(img.residual), 2)}`)
    loc.textContent = parts.join('  ·  ')
  }
  nv.onLocationChange = readout
  readout()

  // ---- panel
  const lesionBox = h('div')
  const metricBox = h('p', { class: 'muted', id: 'metrics' })
  const thrValue = h('output', { id: 'threshold-value' })
  const thrStatus = h('span', { class: 'muted', id: 'threshold-status' })
  const initial = (job.manifest && job.manifest.threshold && job.manifest.threshold.value) ?? 0.1
  const slider = h('input', { type: 'range', id: 'threshold', min: 0, max: 0.8, step: 0.01, value: String(initial) })
  thrValue.textContent = fmt(initial, 2)
  let lesions = await lesionsP
  const report = await reportP

  function showMetrics(metrics) {
    const at = metrics && (metrics.at_threshold || metrics)
    metricBox.textContent = at && at.dice !== undefined ? `Dice vs the uploaded label: ${fmt(at.dice, 3)}` : ''
  }
  function lesionTable() {
    if (!lesions.length) return mount(lesionBox, h('p', { class: 'empty', text: 'No lesion at this threshold.' }))
    const total = lesions.reduce((s, l) => s + l.volume_ml, 0)
    mount(lesionBox, h('table', { class: 'lesions', id: 'lesions', data: { count: String(lesions.length) } },
      h('thead', {}, h('tr', {}, ['#', 'Volume ml', 'SUVmax', 'SUVmean', 'Centroid x, y, z (mm)'].map((t) => h('th', { text: t })))),
      h('tbody', {}, lesions.map((l) => h('tr', { class: 'click', data: { lesion: String(l.id) }, title: 'show this lesion',
        onclick: (e) => jump(l, e.currentTarget) },
      h('td', { text: String(l.id) }), h('td', { text: fmt(l.volume_ml, 1) }), h('td', { text: fmt(l.suv_max, 1) }),
      h('td', { text: fmt(l.suv_mean, 1) }),
      h('td', { class: 'mono', text: `${fmt(l.centroid_x_mm, 0)}, ${fmt(l.centroid_y_mm, 0)}, ${fmt(l.centroid_z_mm, 0)}` })))),
      h('tfoot', {}, h('tr', {}, h('td', { text: 'Σ' }), h('td', { text: fmt(total, 1) }), h('td', { colSpan: 3, text: `${lesions.length} lesion${lesions.length === 1 ? '' : 's'}` })))))
  }
  function jump(lesion, row) {
    nv.scene.crosshairPos = nv.mm2frac([lesion.centroid_x_mm, lesion.centroid_y_mm, lesion.centroid_z_mm])
    nv.drawScene()
    readout()
    for (const r of lesionBox.querySelectorAll('tr.selected')) r.classList.remove('selected')
    if (row) row.classList.add('selected')
  }
  async function rethreshold() {
    const t = Number(slider.value)
    slider.disabled = true
    thrStatus.textContent = 'recomputing…'
    try {
      const out = await api(`v1/jobs/${job.id}/threshold`, { method: 'POST', json: { threshold: t } })
      lesions = out.lesions
      await loadMask(await bytes(`v1/jobs/${job.id}/results/mask.nii.gz`))
      lesionTable()
      showMetrics(out.metrics)
      thrStatus.textContent = `mask at ${fmt(out.threshold, 2)}`
    } catch (err) {
      thrStatus.textContent = ''
      mount(lesionBox, errorBox(err))
    } finally {
      slider.disabled = false
    }
  }
  slider.addEventListener('input', () => { thrValue.textContent = fmt(Number(slider.value), 2) })
  slider.addEventListener('change', rethreshold)

  const toggle = (key, label, legend) => h('label', { class: 'layer' },
    h('input', { type: 'checkbox', id: `show-${key}`, checked: state.show[key], onchange: (e) => { state.show[key] = e.target.checked; styleLayers() } }),
    legend, h('span', { text: label }))
  const outlineSwatch = h('span', { class: 'swatch outline' })
  outlineSwatch.style.borderColor = `rgb(${OUTLINE_RGB.join(',')})`
  const seg = (id, options, current, onpick) => h('div', { class: 'seg', id }, options.map(([v, t]) =>
    h('button', { type: 'button', class: v === current ? 'on' : '', data: { value: v }, text: t, onclick: (e) => {
      for (const b of e.currentTarget.parentNode.children) b.classList.toggle('on', b === e.currentTarget)
      onpick(v)
    } })))
  const suvSelect = h('select', { id: 'suv-max', onchange: (e) => {
    state.suvMax = Number(e.target.value)
    if (img.pet) img.pet.cal_max = state.suvMax / factor
    if (img.healthyPet) img.healthyPet.cal_max = state.suvMax
    if (base === 'pet') img.scan.cal_max = state.suvMax / factor
    const label = panel.querySelector('#show-pet + .swatch + span')
    if (label) label.textContent = `PET, SUV 0–${state.suvMax}`
    nv.updateGLVolume()
  } }, [4, 6, 8, 10, 15, 20].map((v) => h('option', { value: v, selected: v === state.suvMax, text: `0–${v}` })))
  const ctSelect = base === 'ct' ? h('select', { id: 'ct-window', onchange: (e) => {
    for (const v of [img.scan, img.healthyScan].filter(Boolean)) [v.cal_min, v.cal_max] = CT_WINDOWS[e.target.value]
    nv.updateGLVolume()
  } }, Object.keys(CT_WINDOWS).map((k) => h('option', { value: k, text: k }))) : null

  mount(panel,
    h('section', {}, h('h2', { text: 'Image' }),
      seg('image-mode', [['scan', 'Scan'], ['healthy', 'Inpainted (healthy)']], 'scan', (v) => {
        state.healthy = v === 'healthy'
        tag.textContent = state.healthy ? 'Inpainted: the network’s “healthy” image' : 'Scan'
        tag.classList.toggle('healthy', state.healthy)
        layout()
        readout()
      }),
      img.healthyScan ? null : h('small', { class: 'muted', text: 'no inpainted image in the results' }),
      seg('view-mode', Object.keys(VIEWS).map((k) => [k, k]), 'All', (v) => {
        nv.opts.heroImageFraction = v === 'All' ? HERO : 0
        nv.setSliceType(VIEWS[v])
      }),
      h('div', { class: 'windows' }, ctSelect ? h('label', {}, 'CT window ', ctSelect) : null, h('label', {}, 'PET SUV ', suvSelect))),
    h('section', { class: 'legend' }, h('h2', { text: 'Layers' }),
      img.pet || img.healthyPet ? toggle('pet', `PET, SUV 0–${state.suvMax}`, swatch(LAYERS.pet.colormap)) : null,
      img.residual ? toggle('residual', `Residual ${LAYERS.residual.range.join('–')}`, swatch(LAYERS.residual.colormap)) : null,
      buf.mask ? toggle('outline', 'Tumour mask (outline)', outlineSwatch) : null,
      h('small', { class: 'muted', text: 'Residual: how much the network changed the scan when inpainting it as healthy.' })),
    h('section', {}, h('h2', {}, 'Threshold ', thrValue),
      img.residual ? [slider, h('div', { class: 'scale' }, h('span', { text: '0 · more' }), thrStatus, h('span', { text: 'fewer · 0.8' }))]
        : h('small', { class: 'muted', text: 'no residual stored: the threshold cannot change' }),
      metricBox),
    h('section', {}, h('h2', { text: 'Lesions' }), lesionBox,
      h('small', { class: 'muted', text: 'Click a lesion to move the crosshair to its centroid (RAS mm).' })),
    h('section', {}, h('h2', { text: 'Downloads' }), h('div', { class: 'downloads' },
      [...names].sort().map((n) => h('button', { class: 'link', text: n, onclick: () => saveAs(`v1/jobs/${job.id}/results/${n}`, n) })))),
  )
  lesionTable()
  showMetrics(report && report.metrics)
  if (lesions.length) jump(lesions[0], lesionBox.querySelector('tbody tr'))

  // Read-only handle for tests and the console.
  window.autopaintViewer = {
    nv, get lesions() { return lesions }, get maskVoxels() { return state.maskVoxels || 0 },
    crosshairMM: () => Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3),
    get healthy() { return state.healthy },
  }
  return () => {
    delete window.autopaintViewer
    nv.cleanup()
    nv.gl?.getExtension('WEBGL_lose_context')?.loseContext()
  }
}
