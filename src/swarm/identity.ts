// What a node keeps in its store to be the same member after a restart: its key pair seed, the
// cluster secrets (./admission.ts) and where to bootstrap from; and the join token that carries
// the current secret and the bootstrap addresses.

import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import DHT from 'hyperdht'
import { SheepError } from '../errors'
import type { Secrets } from './admission'
import type { Address } from './mesh'
import { newSecret, SECRET_BYTES } from './proof'

const FILE = 'cluster.json'
const FORMAT = 1
const TOKEN_PREFIX = 'sheep1'

export interface Identity {
  keyPair: DHT.KeyPair
  secrets: Secrets
  /** Bootstrap nodes learned from the join token (and --bootstrap). */
  bootstrap: Address[]
  /** The join token's secret replaced the store's: the cluster rotated it while this node was down. */
  rotatedWhileDown: boolean
}

/** `next` and `previous` are absent unless a rotation is under way, or was done (format 1 all the same: readers before them ignore them). */
interface Saved { format: number, seed: string, secret: string, next?: string, previous?: string, bootstrap: Address[] }

/** A token: `sheep1.<secret, base64url>.<host:port>[,<host:port>...]`. */
export function encodeToken (secret: Buffer, bootstrap: Address[]): string {
  return `${TOKEN_PREFIX}.${secret.toString('base64url')}.${bootstrap.map(a => `${a.host}:${a.port}`).join(',')}`
}

export function decodeToken (token: string): { secret: Buffer, bootstrap: Address[] } {
  const parts = token.trim().split('.')
  const bad = (why: string): SheepError => SheepError.invalid(`bad join token (${why}); get one with 'sheep cluster token' on a member`)
  if (parts.length < 3 || parts[0] !== TOKEN_PREFIX) throw bad(`it does not start with ${TOKEN_PREFIX}.`)
  const secret = Buffer.from(parts[1] as string, 'base64url')
  if (secret.length !== SECRET_BYTES) throw bad('the secret is not 32 bytes')
  const hosts = parts.slice(2).join('.')
  if (hosts === '') throw bad('no bootstrap address')
  return { secret, bootstrap: hosts.split(',').map(parseAddress) }
}

/** host:port, as given to --bootstrap. */
export function parseAddress (text: string): Address {
  const m = /^(.+):(\d{1,5})$/.exec(text.trim())
  const port = m === null ? NaN : Number(m[2])
  if (m === null || port < 1 || port > 65535) throw SheepError.invalid(`bad address ${JSON.stringify(text)}: expected host:port`)
  return { host: m[1] as string, port }
}

/**
 * Loads the node's identity from its store, or makes one: a new cluster secret when founding
 * (no token), the token's secret when joining. A token whose secret the store does not know
 * replaces its secret: that is how a member that was down while the secret was rotated comes
 * back (the store keeps its key and views).
 */
export function loadIdentity (storeDir: string, token: { secret: Buffer, bootstrap: Address[] } | null, extraBootstrap: Address[]): Identity {
  const file = path.join(storeDir, FILE)
  let saved: Saved | null = null
  try {
    saved = parseSaved(JSON.parse(fs.readFileSync(file, 'utf8')), file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  let rotatedWhileDown = false
  // Only a secret the store does not know replaces: a restart with the join token it was first
  // started with (its command line) must not take it back to the secret a rotation retired.
  const known = saved === null ? [] : [saved.secret, saved.next, saved.previous]
  if (saved !== null && token !== null && !known.includes(token.secret.toString('hex'))) {
    saved = { format: FORMAT, seed: saved.seed, secret: token.secret.toString('hex'), previous: saved.secret, bootstrap: saved.bootstrap }
    rotatedWhileDown = true
  }
  if (saved === null) {
    saved = { format: FORMAT, seed: crypto.randomBytes(32).toString('hex'), secret: (token?.secret ?? newSecret()).toString('hex'), bootstrap: token?.bootstrap ?? [] }
    writeDurably(file, JSON.stringify(saved, null, 2) + '\n')
  } else if (token !== null) {
    saved.bootstrap = token.bootstrap
    writeDurably(file, JSON.stringify(saved, null, 2) + '\n')
  }
  const bootstrap = [...extraBootstrap, ...saved.bootstrap.filter(a => !extraBootstrap.some(b => b.host === a.host && b.port === a.port))]
  const hex = (h: string | undefined): Buffer | null => h === undefined ? null : Buffer.from(h, 'hex')
  return {
    keyPair: DHT.keyPair(Buffer.from(saved.seed, 'hex')),
    secrets: { current: Buffer.from(saved.secret, 'hex'), next: hex(saved.next), previous: hex(saved.previous) },
    bootstrap,
    rotatedWhileDown
  }
}

/** Saves the secrets (a rotation step) durably, keeping the rest of the store's identity. */
export function saveSecrets (storeDir: string, secrets: Secrets): void {
  const file = path.join(storeDir, FILE)
  const saved = parseSaved(JSON.parse(fs.readFileSync(file, 'utf8')), file)
  const next: Saved = { format: FORMAT, seed: saved.seed, secret: secrets.current.toString('hex'), bootstrap: saved.bootstrap }
  if (secrets.next !== null) next.next = secrets.next.toString('hex')
  if (secrets.previous !== null) next.previous = secrets.previous.toString('hex')
  writeDurably(file, JSON.stringify(next, null, 2) + '\n')
}

function parseSaved (x: unknown, file: string): Saved {
  const s = x as Partial<Saved>
  const ok = typeof s === 'object' && s !== null && s.format === FORMAT &&
    typeof s.seed === 'string' && /^[0-9a-f]{64}$/.test(s.seed) &&
    typeof s.secret === 'string' && /^[0-9a-f]{64}$/.test(s.secret) &&
    (s.next === undefined || (typeof s.next === 'string' && /^[0-9a-f]{64}$/.test(s.next))) &&
    (s.previous === undefined || (typeof s.previous === 'string' && /^[0-9a-f]{64}$/.test(s.previous))) &&
    Array.isArray(s.bootstrap) && s.bootstrap.every(a => typeof a?.host === 'string' && Number.isInteger(a?.port))
  if (!ok) throw SheepError.corrupt(`${file} is not a cluster identity this version understands`)
  return s as Saved
}

/** Writes a small file so that after a crash it is either the old or the new content, whole. */
export function writeDurably (file: string, text: string): void {
  const tmp = `${file}.tmp`
  const fd = fs.openSync(tmp, 'w', 0o600)
  try {
    fs.writeSync(fd, text)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  const dir = fs.openSync(path.dirname(file), 'r')
  try { fs.fsyncSync(dir) } finally { fs.closeSync(dir) }
}
