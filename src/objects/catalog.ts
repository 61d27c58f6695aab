// The store's index: one classic-level record per object, keyed by the object id in hex.
// Record format 2 (compact-encoding): uint 2, uint version, uint size, uint flags (bit 0: dirty,
// the file may hold writes newer than the version: see LocalObjectStore's markWrites; bit 1:
// removed, a cluster replica's tombstone of an object removed at that version, with no file;
// bit 2: missed, a cluster replica's copy behind the others' (a change its disk failed, or a newer
// copy a recovery plan found elsewhere), not current until a whole copy replaces it:
// src/swarm/recovery.ts).
// Format 1 (uint 1, version, size) is still read, as clean.
// Each object's chunk checksums (./checksums.ts) are a record of their own, `sum/<id>`: uint 1,
// uint generation (the store's generation they were computed in: LocalObjectStore.open), then
// one little-endian uint32 per 4 KiB chunk. Keys outside the object range: a listing never reads them.
// `meta` holds the store's generation and whether it was closed cleanly (StoreMeta).
//
// Writes are applied in the order they are made, in batches (group commit): classic-level runs
// each call on a pool thread, so two puts of one key made back to back could otherwise land in
// either order and leave the older record (a grown inode whose recorded size went back, cutting
// off owner entries; issue 15). A synced batch makes every write before it durable too, since
// LevelDB's log is written in order.

import { ClassicLevel } from 'classic-level'
import c from 'compact-encoding'
import { SheepError } from '../errors'
import { type ObjectId, oidFromHex, oidToHex } from './oid'
import type { ObjectInfo } from './types'

const RECORD_FORMAT = 2
const DIRTY = 1
const REMOVED = 2
const MISSED = 4
/** Key of the record a sync with nothing else to write writes; outside the range of object keys. */
const SYNC_KEY = 'sync'
const META_KEY = 'meta'
const SUMS_PREFIX = 'sum/'
const SUMS_FORMAT = 1
const META_FORMAT = 1
const FIRST_KEY = '0'.repeat(16)
const LAST_KEY = 'f'.repeat(16)

/** One object's record; the flags only when set (a clean record lists as a plain ObjectInfo). */
export interface CatalogRecord extends ObjectInfo { dirty?: boolean }

interface Fields { version: number, size: number, dirty?: boolean, removed?: boolean, missed?: boolean }

const flagsOf = (r: Fields): number => (r.dirty === true ? DIRTY : 0) | (r.removed === true ? REMOVED : 0) | (r.missed === true ? MISSED : 0)

const record = {
  preencode (state: c.State, r: Fields) {
    c.uint.preencode(state, RECORD_FORMAT); c.uint.preencode(state, r.version); c.uint.preencode(state, r.size); c.uint.preencode(state, flagsOf(r))
  },
  encode (state: c.State, r: Fields) {
    c.uint.encode(state, RECORD_FORMAT); c.uint.encode(state, r.version); c.uint.encode(state, r.size); c.uint.encode(state, flagsOf(r))
  },
  decode (state: c.State): Fields {
    const format = c.uint.decode(state)
    if (format !== 1 && format !== RECORD_FORMAT) throw new Error(`unknown index record format ${format}`)
    const r: Fields = { version: c.uint.decode(state), size: c.uint.decode(state) }
    if (format !== RECORD_FORMAT) return r
    const flags = c.uint.decode(state)
    if ((flags & ~(DIRTY | REMOVED | MISSED)) !== 0) throw new Error(`unknown index record flags ${flags}`)
    if ((flags & DIRTY) !== 0) r.dirty = true
    if ((flags & REMOVED) !== 0) r.removed = true
    if ((flags & MISSED) !== 0) r.missed = true
    return r
  }
}

/** An object's chunk checksums as kept in the index, and the store generation they were computed in. */
export interface SumsRecord { oid: ObjectId, generation: number, sums: Uint8Array }

/** What the store says of itself across restarts (LocalObjectStore.open). */
export interface StoreMeta { generation: number, bootId: string, clean: boolean }

const sumsValue = {
  preencode (state: c.State, r: SumsRecord) { c.uint.preencode(state, SUMS_FORMAT); c.uint.preencode(state, r.generation); c.raw.preencode(state, r.sums) },
  encode (state: c.State, r: SumsRecord) { c.uint.encode(state, SUMS_FORMAT); c.uint.encode(state, r.generation); c.raw.encode(state, r.sums) },
  decode (state: c.State): { generation: number, sums: Uint8Array } {
    const format = c.uint.decode(state)
    if (format !== SUMS_FORMAT) throw new Error(`unknown checksum record format ${format}`)
    return { generation: c.uint.decode(state), sums: c.raw.decode(state) }
  }
}

const metaValue = {
  preencode (state: c.State, m: StoreMeta) { c.uint.preencode(state, META_FORMAT); c.uint.preencode(state, m.generation); c.string.preencode(state, m.bootId); c.bool.preencode(state, m.clean) },
  encode (state: c.State, m: StoreMeta) { c.uint.encode(state, META_FORMAT); c.uint.encode(state, m.generation); c.string.encode(state, m.bootId); c.bool.encode(state, m.clean) },
  decode (state: c.State): StoreMeta {
    const format = c.uint.decode(state)
    if (format !== META_FORMAT) throw new Error(`unknown store meta format ${format}`)
    return { generation: c.uint.decode(state), bootId: c.string.decode(state), clean: c.bool.decode(state) }
  }
}

type Op = { type: 'put', key: string, value: Buffer } | { type: 'del', key: string }

interface Queued {
  ops: Op[]
  sync: boolean
  done: (err?: Error) => void
}

/** A record that could not be decoded: listed apart, so that nothing is deleted for it. */
export interface UnreadableRecord {
  key: string
  reason: string
}

export class Catalog {
  private readonly db: ClassicLevel<string, Buffer>
  private queue: Queued[] = []
  private writing = false
  /** A batch written without sync since the last synced one: flush() has work to do. */
  private unsynced = false

  constructor (dir: string) {
    this.db = new ClassicLevel<string, Buffer>(dir, { keyEncoding: 'utf8', valueEncoding: 'buffer' })
  }

  async open (): Promise<void> {
    try {
      await this.db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') throw SheepError.busy('the store is in use by another sheep daemon')
      throw SheepError.corrupt(`cannot open the store index: ${(err as Error).message}`)
    }
  }

  async close (): Promise<void> {
    await this.flush()
    await this.db.close()
  }

  /** The record as last written (a write still queued is not seen). */
  async get (oid: ObjectId): Promise<CatalogRecord | null> {
    const value = await this.db.get(oidToHex(oid))
    if (value === undefined) return null
    return { oid, ...decodeRecord(oid, value) }
  }

  /**
   * Writes the records, and the checksums with them in one batch, after every write made before;
   * with sync, all of them are durable when it resolves.
   */
  async put (infos: CatalogRecord[], sync = false, sums: SumsRecord[] = []): Promise<void> {
    const ops: Op[] = sums.map(s => ({ type: 'put', key: SUMS_PREFIX + oidToHex(s.oid), value: c.encode(sumsValue, s) }))
    for (const i of infos) ops.push({ type: 'put', key: oidToHex(i.oid), value: c.encode(record, i) })
    await this.enqueue(ops, sync)
  }

  /** Deletes an object's record and checksums. */
  async del (oid: ObjectId): Promise<void> {
    await this.enqueue([{ type: 'del', key: oidToHex(oid) }, { type: 'del', key: SUMS_PREFIX + oidToHex(oid) }], false)
  }

  /** Deletes an object's checksums only: its file is about to change in a way they cannot follow. */
  async delSums (oid: ObjectId): Promise<void> {
    await this.enqueue([{ type: 'del', key: SUMS_PREFIX + oidToHex(oid) }], false)
  }

  /** An object's checksums as last written; null if none are, or they cannot be read. */
  async getSums (oid: ObjectId): Promise<{ generation: number, sums: Uint8Array } | null> {
    const value = await this.db.get(SUMS_PREFIX + oidToHex(oid))
    if (value === undefined) return null
    try {
      return c.decode(sumsValue, value)
    } catch {
      return null
    }
  }

  async getMeta (): Promise<StoreMeta | null> {
    const value = await this.db.get(META_KEY)
    if (value === undefined) return null
    try {
      return c.decode(metaValue, value)
    } catch (err) {
      throw SheepError.corrupt(`the store's meta record is corrupt: ${(err as Error).message}`)
    }
  }

  async putMeta (meta: StoreMeta): Promise<void> {
    await this.enqueue([{ type: 'put', key: META_KEY, value: c.encode(metaValue, meta) }], true)
  }

  /** Makes every write made so far durable. */
  async flush (): Promise<void> {
    if (!this.unsynced && !this.writing) return
    await this.enqueue([{ type: 'put', key: SYNC_KEY, value: Buffer.alloc(0) }], true)
  }

  /**
   * Every object's record in id order (keys are fixed-width hex), from `from` on when given and
   * below `until`; undecodable ones go to `unreadable` instead, never throw.
   */
  async * list (from?: ObjectId, unreadable?: UnreadableRecord[], until?: ObjectId): AsyncIterable<CatalogRecord> {
    const range = until === undefined ? { lte: LAST_KEY } : { lt: oidToHex(until) }
    for await (const [key, value] of this.db.iterator({ gte: from === undefined ? FIRST_KEY : oidToHex(from), ...range })) {
      const oid = oidFromHex(key)
      if (oid === null) {
        unreadable?.push({ key, reason: 'malformed key' })
        continue
      }
      let r: Fields
      try {
        r = decodeRecord(oid, value)
      } catch (err) {
        unreadable?.push({ key, reason: (err as Error).message })
        continue
      }
      yield { oid, ...r }
    }
  }

  private async enqueue (ops: Op[], sync: boolean): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.queue.push({ ops, sync, done: err => err === undefined ? resolve() : reject(err) })
      if (!this.writing) void this.drain()
    })
  }

  /** Writes what is queued, one batch at a time, each batch all that queued while the last ran. */
  private async drain (): Promise<void> {
    this.writing = true
    while (this.queue.length > 0) {
      const group = this.queue
      this.queue = []
      const sync = group.some(q => q.sync)
      let failure: Error | undefined
      try {
        await this.db.batch(group.flatMap(q => q.ops), { sync })
        this.unsynced = !sync
      } catch (err) {
        failure = new SheepError('EIO', `cannot write the store index: ${(err as Error).message}`)
      }
      for (const q of group) q.done(failure)
    }
    this.writing = false
  }
}

function decodeRecord (oid: ObjectId, value: Buffer): Fields {
  try {
    return c.decode(record, value)
  } catch (err) {
    throw SheepError.corrupt(`store index record of object ${oidToHex(oid)} is corrupt: ${(err as Error).message}`)
  }
}
