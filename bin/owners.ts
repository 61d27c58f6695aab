// --owner, --group and --mode as `sheep image create` reads them: a user or group by name (looked
// up through NSS with getent, as chown(1) does) or by number, and an octal mode.

import { spawnSync } from 'node:child_process'

/** The largest id a file may have: (uid_t)-1 means "unchanged" to chown(2). */
export const MAX_ID = 0xfffffffe

/** "0640", "640" or "o640": the permission bits (and setuid, setgid, sticky); null if malformed. */
export function parseMode (text: string): number | null {
  const m = /^(?:0o?)?([0-7]{1,4})$/.exec(text)
  return m === null ? null : parseInt(m[1] as string, 8)
}

/**
 * A user (`passwd`) or group (`group`) by number or name; a string saying what is wrong for
 * anything else. A name made only of digits is a number, as chown(1) reads it.
 */
export function resolveId (db: 'passwd' | 'group', text: string): number | string {
  const what = db === 'passwd' ? 'user' : 'group'
  if (/^\d+$/.test(text)) {
    const n = Number(text)
    return n <= MAX_ID ? n : `${what} id ${text} is past ${MAX_ID}`
  }
  if (!/^[A-Za-z_][A-Za-z0-9_.-]*\$?$/.test(text)) return `${JSON.stringify(text)} is not a ${what} name or number`
  const r = spawnSync('getent', [db, text], { encoding: 'utf8' })
  if (r.error !== undefined) return `cannot look up ${what} ${JSON.stringify(text)}: ${r.error.message}`
  // getent exits 2 for a key it did not find.
  const id = r.status === 0 ? Number(r.stdout.split(':')[2]) : NaN
  return Number.isInteger(id) ? id : `no ${what} ${JSON.stringify(text)} on this host`
}
