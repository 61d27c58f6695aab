// The guest of the crash tests, run as a child process: random writes of whole 4 KiB sectors
// into an image on a sheep mount, with an fsync or fdatasync every few writes, until the daemon
// dies under it. It says on stdout what it does, one line per step, written before the step
// (`W seq offset length`) or after it returned (`S seq`: every write up to seq was acknowledged
// by an fsync), so that the test knows what may and what must be in the image. Each sector a
// write covers holds its sequence number, its own index and a fill byte: see crash-model.ts.
//
// Usage: crash-writer FILE SEED FIRST_SEQ SECTORS

import fs from 'node:fs'
import { Rng } from './random'
import { fillSector, SECTOR } from './crash-model'

const [file = '', seedArg = '', firstArg = '', sectorsArg = ''] = process.argv.slice(2)
const rng = new Rng(Number(seedArg))
const sectors = Number(sectorsArg)
let seq = Number(firstArg)

function say (line: string): void {
  fs.writeSync(1, line + '\n')
}

const fd = fs.openSync(file, 'r+')
const buf = Buffer.alloc(64 * SECTOR)
try {
  for (;;) {
    const writes = rng.int(1, 8)
    for (let i = 0; i < writes; i++) {
      // Mostly small writes, some up to 256 KiB, now and then across an object boundary.
      const count = rng.chance(0.8) ? rng.int(1, 4) : rng.int(5, 64)
      const first = rng.int(0, sectors - count)
      const data = buf.subarray(0, count * SECTOR)
      for (let s = 0; s < count; s++) fillSector(data.subarray(s * SECTOR, (s + 1) * SECTOR), seq, first + s)
      say(`W ${seq} ${first} ${count}`)
      fs.writeSync(fd, data, 0, data.length, first * SECTOR)
      seq++
    }
    if (rng.chance(0.5)) fs.fsyncSync(fd)
    else fs.fdatasyncSync(fd)
    say(`S ${seq - 1}`)
  }
} catch (err) {
  // The daemon was killed: ENOTCONN, ECONNABORTED or EIO. Anything else is the test's business.
  say(`E ${(err as NodeJS.ErrnoException).code ?? String(err)}`)
}
