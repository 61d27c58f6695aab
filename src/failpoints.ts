// Named crash points for tests of crash safety (as TiKV's failpoints): with
// SHEEP_FAILPOINT=<name>[@<n>] and SHEEP_FAILPOINT_ARM=<file> in the daemon's environment, the
// daemon kills itself with SIGKILL the n-th time (default the first) it passes <name> while
// <file> exists. The test creates the file at the moment it wants the crash to become possible.
// With SHEEP_FAILPOINT_DELAY=<ms> as well, a slow point of that name (slowpoint) waits that long
// on that pass instead: an operation that outlives the I/O timeout, or a start-up step that a
// signal arrives in the middle of.
// Without the variables a failpoint costs one comparison.

import fs from 'node:fs'

const [NAME = '', AT = '1'] = (process.env.SHEEP_FAILPOINT ?? '').split('@')
const ARM = process.env.SHEEP_FAILPOINT_ARM ?? ''
const DELAY = Number(process.env.SHEEP_FAILPOINT_DELAY ?? 0)
let hits = 0

export function failpoint (name: string): void {
  if (NAME !== name || ARM === '' || !fs.existsSync(ARM)) return
  if (++hits < Number(AT)) return
  process.stderr.write(`failpoint ${name}: killing the daemon\n`)
  process.kill(process.pid, 'SIGKILL')
}

/** A promise to wait for when this pass of `name` is the armed one (see above), else null: nothing to wait for. */
export function slowpoint (name: string): Promise<void> | null {
  if (NAME !== name || DELAY <= 0 || ARM === '' || !fs.existsSync(ARM)) return null
  if (++hits !== Number(AT)) return null
  process.stderr.write(`failpoint ${name}: waiting ${DELAY} ms\n`)
  return new Promise(resolve => setTimeout(resolve, DELAY))
}
