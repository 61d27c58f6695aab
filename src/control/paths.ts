// Where a daemon's control socket lives, found from its mount point or any path inside the mount.

import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { FUSE_FSNAME } from '../fuse/adapter'

export function runDir (): string {
  if (process.env.SHEEP_RUN_DIR) return process.env.SHEEP_RUN_DIR
  return process.getuid?.() === 0 ? '/run/sheep' : path.join(os.tmpdir(), `sheep-${process.getuid?.() ?? 'user'}`)
}

/** The socket of the daemon mounted at `mountDir` (an absolute, resolved path). */
export function controlSocketPath (mountDir: string): string {
  const key = crypto.createHash('sha256').update(path.resolve(mountDir)).digest('hex').slice(0, 20)
  return path.join(runDir(), `${key}.sock`)
}

/** The sheep mount that contains `p`, if any: the longest sheep mount point that is a prefix of it. */
export function sheepMountContaining (p: string): string | null {
  const target = path.resolve(p)
  let best: string | null = null
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ')
    const sep = fields.indexOf('-')
    if (sep < 0 || fields[sep + 1] !== `fuse.${FUSE_FSNAME}`) continue
    const mnt = (fields[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
    if ((target === mnt || target.startsWith(mnt.endsWith('/') ? mnt : mnt + '/')) && (best === null || mnt.length > best.length)) best = mnt
  }
  return best
}
