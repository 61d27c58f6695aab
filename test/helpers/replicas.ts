// What the tests of issue 11 check once a cluster has settled: no host has objects left to
// recover, every object is in as many stores as its copies, and every copy of an object holds
// the same bytes (the object files in the stores' folders, compared byte for byte), and what the
// guest wrote (a model of acknowledged and unacknowledged writes) reads back through every mount.

import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { type Daemon, SHEEP_BIN, storedObjects } from './daemon'

export interface NodeStatus { epoch: number, members: number, reachable: number, quorate: boolean, recovering: number }

/** `sheep status --json` of one node (its cluster part), or null while it cannot answer. */
export async function nodeStatus (d: Daemon): Promise<NodeStatus | null> {
  return await new Promise(resolve => {
    execFile(process.execPath, [SHEEP_BIN, 'status', '--json', '--mount', d.mount], { env: d.env, timeout: 30_000 }, (err, stdout) => {
      if (err !== null) return resolve(null)
      try {
        resolve((JSON.parse(stdout) as { cluster: NodeStatus | null }).cluster)
      } catch {
        resolve(null)
      }
    })
  })
}

/** Polls the nodes' status (all at once) until `ok` holds for the list, for at most `ms`; throws naming what was seen last. */
export async function waitForStatus (nodes: Daemon[], what: string, ok: (states: Array<NodeStatus | null>) => boolean, ms = 60_000): Promise<Array<NodeStatus | null>> {
  const deadline = Date.now() + ms
  for (;;) {
    const states = await Promise.all(nodes.map(nodeStatus))
    if (ok(states)) return states
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}; last seen ${JSON.stringify(states)}`)
    // Each look starts a `sheep` process per node: not too often on a 2-core machine.
    await new Promise(resolve => setTimeout(resolve, 250))
  }
}

/** Waits until the nodes share one view of `members` members, all reachable, and none has objects left to recover. */
export async function waitForSettled (nodes: Daemon[], members: number, ms = 60_000): Promise<NodeStatus> {
  const states = await waitForStatus(nodes, `one view of ${members} members, all reachable, nothing left to recover`, s => {
    const first = s[0]
    return first != null && s.every(x => x != null && x.epoch === first.epoch && x.members === members && x.reachable === members && x.quorate && x.recovering === 0)
  }, ms)
  return states[0] as NodeStatus
}

/** How many of the nodes' stores hold each object (by its 16-hex-digit id). */
export function copyCounts (nodes: Daemon[]): Map<string, number> {
  const count = new Map<string, number>()
  for (const d of nodes) for (const oid of storedObjects(d)) count.set(oid, (count.get(oid) ?? 0) + 1)
  return count
}

/** Objects not in exactly `copies` stores, as "oid: n copies (holders)" lines. */
export function wrongCopyCounts (nodes: Daemon[], copies: number, names: (d: Daemon) => string = d => d.mount): string[] {
  const files = nodes.map(d => ({ d, files: objectFiles(d) }))
  return [...copyCounts(nodes)].filter(([, n]) => n !== copies).map(([oid, n]) => {
    const holders = files.filter(f => f.files.has(oid)).map(f => `${names(f.d)}, modified ${fs.statSync(f.files.get(oid) as string).mtime.toISOString()}`)
    return `${oid}: ${n} copies (${holders.join('; ')})`
  })
}

/** Waits until every object is in exactly `copies` stores (old holders drop theirs after recovery); returns what is still off. */
export async function waitForCopyCounts (nodes: Daemon[], copies: number, names?: (d: Daemon) => string, ms = 30_000): Promise<string[]> {
  const deadline = Date.now() + ms
  for (;;) {
    const wrong = wrongCopyCounts(nodes, copies, names)
    if (wrong.length === 0 || Date.now() > deadline) return wrong
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

/** The object files of a node's store, by object id (store/objects/<vid>/<id as 16 hex>). */
function objectFiles (d: Daemon): Map<string, string> {
  const dir = path.join(d.store, 'objects')
  const files = new Map<string, string>()
  if (!fs.existsSync(dir)) return files
  for (const e of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile() && /^[0-9a-f]{16}$/.test(e.name)) files.set(e.name, path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))
  }
  return files
}

/**
 * Objects whose copies differ between the stores that hold them, each with the holders and the
 * first offset where they differ. Only meaningful while nothing writes.
 */
export function divergentCopies (nodes: Daemon[], names: (d: Daemon) => string = d => d.mount): string[] {
  const found: string[] = []
  const files = nodes.map(d => ({ d, files: objectFiles(d) }))
  const oids = new Set(files.flatMap(f => [...f.files.keys()]))
  for (const oid of oids) {
    const copies = files.flatMap(({ d, files }) => {
      const file = files.get(oid)
      return file === undefined ? [] : [{ d, bytes: fs.readFileSync(file) }]
    })
    const first = copies[0]
    if (first === undefined) continue
    for (const other of copies.slice(1)) {
      if (first.bytes.equals(other.bytes)) continue
      let at = 0
      while (at < Math.min(first.bytes.length, other.bytes.length) && first.bytes[at] === other.bytes[at]) at++
      found.push(`${oid}: ${names(first.d)} (${first.bytes.length} bytes) and ${names(other.d)} (${other.bytes.length} bytes) differ from offset ${at}`)
    }
  }
  return found
}

/**
 * What a guest wrote into one image, in whole 4 KiB sectors each filled with one byte: for every
 * sector the fill of the last write acknowledged (0 for none) and the fills of writes issued after
 * it and not acknowledged (they may or may not have landed, a sector either wholly or not at all).
 */
export class WriteModel {
  static readonly SECTOR = 4096
  private readonly acked: Uint8Array
  private readonly maybe: Array<Set<number> | undefined>

  constructor (readonly size: number) {
    this.acked = new Uint8Array(size / WriteModel.SECTOR)
    this.maybe = new Array(size / WriteModel.SECTOR)
  }

  /** A write issued (not yet acknowledged): its bytes may be there from now on. */
  issued (offset: number, length: number, fill: number): void {
    for (const s of this.sectors(offset, length)) (this.maybe[s] ??= new Set()).add(fill)
  }

  /** That write was acknowledged (write and flush answered): its bytes must be there. */
  acknowledged (offset: number, length: number, fill: number): void {
    for (const s of this.sectors(offset, length)) {
      this.acked[s] = fill
      this.maybe[s] = undefined
    }
  }

  /** Sectors of `image` (the whole image read back) that hold what no write left there, as a few lines. */
  check (image: Buffer, limit = 5): string[] {
    const wrong: string[] = []
    for (let s = 0; s < this.acked.length && wrong.length < limit; s++) {
      const sector = image.subarray(s * WriteModel.SECTOR, (s + 1) * WriteModel.SECTOR)
      const fill = sector[0] as number
      const uniform = sector.every(b => b === fill)
      const want = this.acked[s] as number
      const may = this.maybe[s]
      if (uniform && (fill === want || may?.has(fill) === true)) continue
      wrong.push(`sector ${s} (offset ${s * WriteModel.SECTOR}): ${uniform ? `filled with ${fill}` : `mixed bytes (${fill} first)`}, expected ${want}${may === undefined ? '' : ` or one of ${[...may].join(', ')} (not acknowledged)`}`)
    }
    return wrong
  }

  private * sectors (offset: number, length: number): Generator<number> {
    for (let s = offset / WriteModel.SECTOR; s < (offset + length) / WriteModel.SECTOR; s++) yield s
  }
}
