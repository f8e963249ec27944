// A small parser of `text/event-stream` (the WHATWG "event stream interpretation"), for reading a
// server-sent event stream with fetch(): EventSource cannot send an Authorization header.
//
// Feed it the decoded text in chunks of any size (a line, even a CR LF pair, may be split between
// two chunks). Lines end with LF, CR or CR LF; a blank line dispatches the event collected so far:
// onEvent(type, data, lastId), `type` 'message' when no `event:` line named it, `data` the `data:`
// lines joined with LF. `: ...` lines are comments (onComment), `retry: <digits>` calls onRetry(ms),
// unknown fields are ignored, an event the stream ends in the middle of is dropped.

export class SseParser {
  constructor({ onEvent = () => {}, onRetry = () => {}, onComment = () => {} } = {}) {
    Object.assign(this, { onEvent, onRetry, onComment })
    this.buf = ''
    this.type = ''
    this.data = []
    this.lastId = ''
    this.skipLF = false  // the previous chunk ended with CR: an LF starting this one belongs to it
  }

  push(chunk) {
    const text = this.buf + chunk
    let pos = 0
    if (this.skipLF && text[0] === '\n') pos = 1
    this.skipLF = false
    for (;;) {
      const cr = text.indexOf('\r', pos)
      const lf = text.indexOf('\n', pos)
      if (cr === -1 && lf === -1) break
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf)
      const line = text.slice(pos, end)
      if (text[end] === '\r' && end + 1 === text.length) {
        this.skipLF = true
        pos = end + 1
      } else {
        pos = end + (text[end] === '\r' && text[end + 1] === '\n' ? 2 : 1)
      }
      this.line(line)
    }
    this.buf = text.slice(pos)
  }

  line(line) {
    if (line === '') return this.dispatch()
    if (line[0] === ':') return this.onComment(line.slice(1).replace(/^ /, ''))
    const colon = line.indexOf(':')
    const field = colon === -1 ? line : line.slice(0, colon)
    let value = colon === -1 ? '' : line.slice(colon + 1)
    if (value[0] === ' ') value = value.slice(1)
    if (field === 'event') this.type = value
    else if (field === 'data') this.data.push(value)
    else if (field === 'id' && !value.includes('\0')) this.lastId = value
    else if (field === 'retry' && /^[0-9]+$/.test(value)) this.onRetry(Number(value))
  }

  dispatch() {
    const type = this.type || 'message'
    const data = this.data
    this.type = ''
    this.data = []
    if (data.length) this.onEvent(type, data.join('\n'), this.lastId)
  }
}
