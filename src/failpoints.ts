// Named crash points for tests of crash safety (as TiKV's failpoints): with
// SHEEP_FAILPOINT=<name>[@<n>] and SHEEP_FAILPOINT_ARM=<file> in the daemon's environment, the
// daemon kills itself with SIGKILL the n-th time (default the first) it passes <name> while
// <file> exists. The test creates the file at the moment it wants the crash to become possible.
// Without the variables a failpoint costs one comparison.

import fs from 'node:fs'

const [NAME = '', AT = '1'] = (process.env.SHEEP_FAILPOINT ?? '').split('@')
const ARM = process.env.SHEEP_FAILPOINT_ARM ?? ''
let hits = 0

export function failpoint (name: string): void {
  if (NAME !== name || ARM === '' || !fs.existsSync(ARM)) return
  if (++hits < Number(AT)) return
  process.stderr.write(`failpoint ${name}: killing the daemon\n`)
  process.kill(process.pid, 'SIGKILL')
}
