// Bundles the viewer (src/main.js + NiiVue) into services/api/static/viewer/ (served by the API
// at /viewer). Run by `make setup` after `npm ci`; no CDN, no network at run time.
import { build } from 'esbuild'
import { copyFile, mkdir, rm, stat } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, '..', 'services', 'api', 'static', 'viewer')

await rm(out, { recursive: true, force: true })
await mkdir(out, { recursive: true })
// NiiVue's zarr support loads numcodecs' WebAssembly codecs (1.3 MB) on demand; the viewer only
// opens NIfTI, so they are replaced by a stub that refuses (keeps the bundle ~1 MB).
const noZarrCodecs = {
  name: 'no-zarr-codecs',
  setup(b) {
    b.onResolve({ filter: /^numcodecs(\/|$)/ }, (args) => ({ path: args.path, namespace: 'stub' }))
    b.onLoad({ filter: /.*/, namespace: 'stub' }, () => ({
      contents: 'export default class { static fromConfig() { throw new Error("zarr codecs are not bundled") } }',
    }))
  },
}

await build({
  entryPoints: [join(here, 'src', 'main.js')],
  outfile: join(out, 'viewer.js'),
  bundle: true,
  format: 'esm',
  minify: true,
  target: ['es2022'],
  legalComments: 'eof',
  logLevel: 'warning',
  plugins: [noZarrCodecs],
})
for (const name of ['index.html', 'viewer.css']) {
  await copyFile(join(here, 'src', name), join(out, name))
}
const kb = (await stat(join(out, 'viewer.js'))).size / 1024
console.log(`viewer bundle: ${out} (viewer.js ${kb.toFixed(0)} KiB)`)
