// An in-memory ObjectStore that models a disk with a volatile cache, for power-cut tests of the
// image layer (issue 15). Every call changes what reads see at once; crash() returns a new store
// holding only what a power cut could have left: the durable state plus a random subset of the
// operations that were not yet durable, applied in the order they were made.
//
// What "durable" means here follows src/objects/local-store.ts exactly, and no more. The state is
// split in the pieces the real store keeps on disk, each a stream of operations with its own sync:
//
// - The catalog (LevelDB: one record of size and version per object). Records are written in the
//   order they are made (catalog.ts) but without sync; a synced batch makes every earlier one
//   durable. Unsynced records survive as a random SUBSET (LevelDB's log reader skips a torn
//   record and goes on), not only a prefix. What writes a record, and when:
//   - create: a put without sync, added to the store's `records` queue, so that the next sync()
//     of ANY object flushes the catalog (or one such flush under way is waited for).
//   - a write or a truncate that grows an object writes NO record: the larger size lives in
//     memory (the entry's info) only. sync() of THAT object, once its file's fdatasync is done,
//     writes a SYNCED batch recording the size the object had when the sync was called (if
//     larger than the size last recorded, `savedSize`), with its version at that moment.
//   - after a sync, the version records of the objects it synced whose version changed, without
//     sync and not queued (persistVersions), each with size min(in-memory size, savedSize):
//     never a size larger than one recorded before.
//   - truncate that shrinks: the smaller size put WITH sync first, then the file's ftruncate.
//   - replace: puts with sync. A delete (remove, setAside) adds nothing to the queue: it becomes
//     durable only when a later catalog sync happens for another reason.
//   Reads (stat, list, the size a read is checked against) see the in-memory entry: the record
//   as last written, plus the growths and versions not recorded yet.
//   close() (restart() here, the clean stop) syncs the grown objects first, then writes every
//   version with sync: the store it leaves is exactly what reads saw.
// - Names in the object folders (one folder per vid). sync() fsyncs every folder that gained a
//   name since the last sync (`newNames`): that makes the folder's entries durable, unlinks
//   included. An unlink in a folder that gained no name stays volatile (as far as the code
//   guarantees; ext4's journal would usually commit it, we do not count on that). replace()
//   fsyncs its own folder.
// - File contents and sizes. fdatasync of a file (sync() of that object) makes its bytes and size
//   durable. Nothing else does: a file whose name and record were made durable by another
//   object's sync, but which was never fdatasynced itself, may come back with any subset of its
//   writes and ftruncates, applied in order, page (4 KiB) by page. So it may be shorter than its
//   record (the real store reads that as EIO), read zeros where data was written, or hold some
//   pages of a write and not others. ext4 data=ordered would usually keep the ftruncate'd size
//   (an i_size change is journal metadata, committed with any other fsync) and never shows stale
//   blocks of other files; we allow the weaker states (shorter file, any subset of pages) since
//   the store's code does not ask for more, and never the impossible ones (bytes never written).
//   O_CREAT|O_TRUNC over a name that a crash brought back reuses that file, as open(2) does.
// - Reopening after a crash: an object's first access (loadEntry) finds its file; one shorter
//   than its record is EIO, one LONGER is cut (ftruncate, not synced) to the record's size before
//   use. The reopened store makes those cuts at once (the same, since nothing reads a file before
//   its first access), as operations not yet durable: a second power cut may undo them (and the
//   next reopen cuts again).
// - replace and compareAndReplace write a temporary file, fdatasync it, rename it over the
//   object and sync the folder and the catalog: atomic, and durable when they resolve.
//
// Timing: each call takes a random number of microtask turns (from the store's own seeded Rng)
// before its effect happens, so concurrent callers interleave differently per seed. A call whose
// effect has not happened yet is "in flight": crash() lets each such effect happen or not, at
// random. A sync() takes its marks (what it must make durable: what was made before it was
// called) at the call, and applies them when its effect happens; a sync called while another's
// catalog or folder flush is under way waits for it, as SyncQueue does, so it inherits its marks.
// cutAfter(n) stops the disk after n more effects (later calls stay in flight): the disk only
// changes at effects, so cuts between effects reach every state a power cut can leave.
// After crash() the old store is dead: its calls never resolve (the old ImageStore just stops).

import { SheepError } from '../../src/errors'
import { type ObjectId, oidToHex, oidVid } from '../../src/objects/oid'
import type { ObjectInfo, ObjectStore, StoreUsage } from '../../src/objects/types'
import { writeFreshBySteps } from '../../src/objects/write-fresh'
import { Rng } from './random'

const PAGE = 4096

interface Rec { version: number, size: number }
/** An object as the local store holds it in memory (its Entry): info, and what the catalog was last given. */
interface Entry extends Rec { savedVersion: number, savedSize: number }
/** A file: its size and its pages (4 KiB, never changed in place, so a copy shares them); a missing page reads as zeros. */
interface FileState { pages: Map<number, Buffer>, size: number }
type FileOp = { kind: 'size', size: number } | { kind: 'write', offset: number, data: Buffer }
interface CatalogOp { oid: ObjectId, rec: Rec | null }
interface NameOp { oid: ObjectId, file: number | null }

/** A piece of disk state: what is durable, and the operations since that are not (yet). */
class Stream<S, Op> {
  durable: S
  pending: Op[] = []
  /** Operations ever added, and how many of them are durable. */
  private total = 0
  private flushed = 0

  constructor (durable: S, private readonly applyOp: (state: S, op: Op) => void, private readonly copy: (state: S) => S) {
    this.durable = durable
  }

  add (op: Op): void { this.pending.push(op); this.total++ }
  mark (): number { return this.total }

  /** Makes the operations made before `mark` durable. */
  flushTo (mark: number): void {
    const n = mark - this.flushed
    if (n <= 0) return
    for (const op of this.pending.splice(0, n)) this.applyOp(this.durable, op)
    this.flushed = mark
  }

  /** The durable state plus each pending operation with probability p, in order. */
  crash (rng: Rng, p: number): S {
    const state = this.copy(this.durable)
    for (const op of this.pending) if (rng.chance(p)) this.applyOp(state, op)
    return state
  }
}

function applyFileOp (f: FileState, op: FileOp): void {
  if (op.kind === 'size') {
    // Bytes past a shrink are gone: a later grow reads zeros there.
    if (op.size < f.size) {
      for (const p of [...f.pages.keys()]) {
        if (p * PAGE >= op.size) f.pages.delete(p)
        else if ((p + 1) * PAGE > op.size) f.pages.set(p, Buffer.concat([(f.pages.get(p) as Buffer).subarray(0, op.size - p * PAGE), Buffer.alloc((p + 1) * PAGE - op.size)]))
      }
    }
    f.size = op.size
    return
  }
  const end = op.offset + op.data.length
  for (let off = op.offset; off < end;) {
    const p = Math.floor(off / PAGE)
    const to = Math.min(end, (p + 1) * PAGE)
    if (to - off === PAGE) {
      // A whole page: the op's own bytes, shared (pages are never changed in place).
      f.pages.set(p, off === op.offset && to === end ? op.data : op.data.subarray(off - op.offset, to - op.offset))
    } else {
      const page = Buffer.alloc(PAGE)
      f.pages.get(p)?.copy(page)
      op.data.copy(page, off - p * PAGE, off - op.offset, to - op.offset)
      f.pages.set(p, page)
    }
    off = to
  }
  if (end > f.size) f.size = end
}

/** Copies file bytes [offset, offset + length) into target. */
function readFile (f: FileState, offset: number, length: number, target: Uint8Array, targetOffset: number): void {
  for (let off = offset; off < offset + length;) {
    const p = Math.floor(off / PAGE)
    const to = Math.min(offset + length, (p + 1) * PAGE)
    const page = f.pages.get(p)
    if (page === undefined) target.fill(0, targetOffset + off - offset, targetOffset + to - offset)
    else page.copy(target, targetOffset + off - offset, off - p * PAGE, to - p * PAGE)
    off = to
  }
}

const copyFile = (f: FileState): FileState => ({ pages: new Map(f.pages), size: f.size })
const newFile = (): FileState => ({ pages: new Map(), size: 0 })
const copyMap = <K, V>(m: Map<K, V>): Map<K, V> => new Map(m)
function applyCatalogOp (m: Map<ObjectId, Rec>, op: CatalogOp): void { if (op.rec === null) m.delete(op.oid); else m.set(op.oid, { ...op.rec }) }
function applyNameOp (m: Map<ObjectId, number>, op: NameOp): void { if (op.file === null) m.delete(op.oid); else m.set(op.oid, op.file) }

/** What a sync must make durable, taken when it is called. */
interface SyncMarks {
  files: Array<[number, number]>
  folders: Array<[number, number]>
  catalog: number | null
  /** The synced objects' entries, and each one's size when the sync was called. */
  entries: Array<{ oid: ObjectId, e: Entry, size: number }>
}

/** The state a crashed store starts from: everything durable. */
interface DiskState { records: Map<ObjectId, Rec>, names: Map<ObjectId, number>, files: Map<number, FileState>, nextFile: number }

export interface CrashOptions {
  /** Probability that an in-flight call's effect happens before the cut (default 0.5). */
  inflight?: number
  /** Probability that each operation not yet durable reached the disk anyway (default: random per crash). */
  landed?: number
}

export class PowerCutStore implements ObjectStore {
  // What reads see.
  private readonly records = new Map<ObjectId, Entry>()
  private readonly names = new Map<ObjectId, number>()
  private readonly files = new Map<number, FileState>()
  private nextFile: number
  // What is on disk, and what is not yet.
  private readonly catalog: Stream<Map<ObjectId, Rec>, CatalogOp>
  private readonly folders = new Map<number, Stream<Map<ObjectId, number>, NameOp>>()
  private readonly fileStreams = new Map<number, Stream<FileState, FileOp>>()
  /** Folders that gained a name since their last sync (local-store `newNames`). */
  private readonly newNames = new Set<number>()
  /** A record was added to the local store's `records` queue since its last flush. */
  private recordsPending = false
  /** Marks of syncs whose effect has not happened yet: a later sync waits for them (SyncQueue). */
  private readonly underWay = new Set<SyncMarks>()
  private readonly inflight = new Set<() => void>()
  private casTail: Promise<unknown> = Promise.resolve()
  private dead = false
  /** Effects so far, and after how many the disk stops (cutAfter). */
  private effects = 0
  private cutAt = Infinity
  private onCut: (() => void) | undefined
  private readonly rng: Rng
  /** Most microtask turns a call takes before its effect. */
  maxTicks = 3
  /** Calls made, by kind: for the test's statistics. */
  readonly calls: Record<string, number> = {}

  constructor (seed: number, from?: DiskState) {
    this.rng = new Rng(seed)
    const records = from?.records ?? new Map<ObjectId, Rec>()
    const names = from?.names ?? new Map<ObjectId, number>()
    this.nextFile = from?.nextFile ?? 1
    for (const [oid, rec] of records) this.records.set(oid, { ...rec, savedVersion: rec.version, savedSize: rec.size })
    this.catalog = new Stream(copyMap(records), applyCatalogOp, m => new Map([...m].map(([k, v]) => [k, { ...v }])))
    for (const [oid, file] of names) {
      this.names.set(oid, file)
      applyNameOp(this.folder(oidVid(oid)).durable, { oid, file })
    }
    for (const [id, f] of from?.files ?? []) {
      this.files.set(id, copyFile(f))
      this.fileStreams.set(id, new Stream(copyFile(f), applyFileOp, copyFile))
    }
    // loadEntry: a file longer than its record is cut to it before use (not synced).
    for (const [oid, rec] of this.records) {
      const id = this.names.get(oid)
      const f = id === undefined ? undefined : this.files.get(id)
      if (id !== undefined && f !== undefined && f.size > rec.size) this.fileOp(id, { kind: 'size', size: rec.size })
    }
  }

  private folder (vid: number): Stream<Map<ObjectId, number>, NameOp> {
    let s = this.folders.get(vid)
    if (s === undefined) { s = new Stream(new Map(), applyNameOp, copyMap); this.folders.set(vid, s) }
    return s
  }

  // ---- the volatile operations, each also logged in its stream ----

  /**
   * A catalog put of `rec` for the entry `e` (the one the caller holds): updates what e was last
   * recorded with, as the local store does. An entry the store forgot meanwhile (removed while a
   * sync of it ran) is not in memory any more: when no new entry took its place, reads see the
   * record, as catalog.get would (its file is gone: reading it is EIO, as in the local store).
   */
  private putRecord (oid: ObjectId, e: Entry, rec: Rec, queued: boolean, saved: (e: Entry) => void): void {
    this.catalog.add({ oid, rec: { ...rec } })
    if (queued) this.recordsPending = true
    saved(e)
    if (!this.records.has(oid)) {
      this.records.set(oid, { ...rec, savedVersion: rec.version, savedSize: rec.size })
    }
  }

  private delRecord (oid: ObjectId): void {
    this.records.delete(oid)
    this.catalog.add({ oid, rec: null })
  }

  /** A synced catalog batch: every record written so far is durable. */
  private syncCatalog (): void { this.catalog.flushTo(this.catalog.mark()) }

  private link (oid: ObjectId, file: number): void {
    this.names.set(oid, file)
    this.folder(oidVid(oid)).add({ oid, file })
    this.newNames.add(oidVid(oid))
  }

  private unlink (oid: ObjectId): void {
    if (!this.names.has(oid)) return
    this.names.delete(oid)
    this.folder(oidVid(oid)).add({ oid, file: null })
  }

  /** Applies a file operation; a write's data is the store's own copy, never changed after. */
  private fileOp (id: number, op: FileOp): void {
    const f = this.files.get(id) as FileState
    applyFileOp(f, op)
    let s = this.fileStreams.get(id)
    if (s === undefined) { s = new Stream(newFile(), applyFileOp, copyFile); this.fileStreams.set(id, s) }
    if (op.kind === 'size') { s.add(op); return }
    // Pages reach the disk independently of each other.
    for (let off = op.offset; off < op.offset + op.data.length;) {
      const end = Math.min(op.offset + op.data.length, (Math.floor(off / PAGE) + 1) * PAGE)
      s.add({ kind: 'write', offset: off, data: op.data.subarray(off - op.offset, end - op.offset) })
      off = end
    }
  }

  /** The object's file, as an open descriptor would find it: EIO when missing or short. */
  private fileOf (oid: ObjectId): { rec: Entry, file: FileState, id: number } {
    const rec = this.records.get(oid)
    if (rec === undefined) throw SheepError.notFound(`object ${oidToHex(oid)}`)
    const id = this.names.get(oid)
    if (id === undefined) throw SheepError.corrupt(`object ${oidToHex(oid)} is missing from the store: its file is gone`)
    const file = this.files.get(id) as FileState
    if (file.size < rec.size) throw SheepError.corrupt(`object ${oidToHex(oid)} is truncated: its file has ${file.size} bytes, the index says ${rec.size}`)
    return { rec, file, id }
  }

  // ---- timing ----

  /** Runs `effect` after a random number of microtask turns; never settles once the store is dead. */
  private async later<T> (kind: string, effect: () => T): Promise<T> {
    this.calls[kind] = (this.calls[kind] ?? 0) + 1
    if (this.dead) return await never<T>()
    let result: { value: T } | { error: unknown } | undefined
    const run = (): void => {
      try { result = { value: effect() } } catch (error) { result = { error } }
    }
    this.inflight.add(run)
    const ticks = this.rng.int(0, this.maxTicks)
    for (let i = 0; i < ticks; i++) await Promise.resolve()
    if (this.dead) return await never<T>()
    if (this.effects >= this.cutAt) {
      // The power is going: this call stays in flight, for crash() to decide.
      this.onCut?.()
      return await never<T>()
    }
    this.effects++
    this.inflight.delete(run)
    run()
    // Happened: the caller hears of it one turn later (a crash may fall in between).
    await Promise.resolve()
    if (this.dead || result === undefined) return await never<T>()
    if ('error' in result) throw result.error
    return result.value
  }

  // ---- ObjectStore ----

  async create (oid: ObjectId, size: number): Promise<void> {
    await this.later('create', () => {
      if (this.records.has(oid)) throw SheepError.exists(`object ${oidToHex(oid)}`)
      // The record first (unsynced, queued for the next sync of any object), then the file.
      const e: Entry = { version: 1, size, savedVersion: 1, savedSize: size }
      this.records.set(oid, e)
      this.putRecord(oid, e, { version: 1, size }, true, () => {})
      // O_CREAT | O_TRUNC: a name a crash brought back is reused, its file emptied.
      let id = this.names.get(oid)
      if (id === undefined) {
        id = this.nextFile++
        this.files.set(id, newFile())
        this.link(oid, id)
      } else {
        this.fileOp(id, { kind: 'size', size: 0 })
      }
      this.fileOp(id, { kind: 'size', size })
    })
  }

  async writeFresh (oid: ObjectId, size: number, offset: number, data: Uint8Array): Promise<void> {
    // As the real store: its own create (or truncates), then its write.
    await writeFreshBySteps(this, oid, size, offset, data)
  }

  async read (oid: ObjectId, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
    await this.later('read', () => {
      const { rec, file } = this.fileOf(oid)
      if (offset + length > rec.size) throw SheepError.invalid(`read past the end of object ${oidToHex(oid)}`)
      readFile(file, offset, length, target, targetOffset)
    })
  }

  async write (oid: ObjectId, offset: number, data: Uint8Array): Promise<void> {
    // The caller may reuse its buffer once answered: copy it now.
    const bytes = Buffer.from(data)
    await this.later('write', () => {
      const { rec, id } = this.fileOf(oid)
      this.fileOp(id, { kind: 'write', offset, data: bytes })
      // No record: the version and a grown size are in memory, recorded by the object's next sync.
      rec.version++
      const end = offset + bytes.length
      if (end > rec.size) rec.size = end
    })
  }

  async readAll (oid: ObjectId): Promise<Buffer> {
    return await this.later('readAll', () => {
      const { rec, file } = this.fileOf(oid)
      const out = Buffer.alloc(rec.size)
      readFile(file, 0, rec.size, out, 0)
      return out
    })
  }

  /** The effect of a whole replace: atomic and durable, with every catalog write before it. */
  private swapIn (oid: ObjectId, data: Buffer, version?: number): number {
    const old = this.records.get(oid)
    const rec = { version: version ?? (old?.version ?? 0) + 1, size: data.length }
    const id = this.nextFile++
    const f = newFile()
    applyFileOp(f, { kind: 'write', offset: 0, data })
    this.files.set(id, f)
    this.fileStreams.set(id, new Stream(copyFile(f), applyFileOp, copyFile))
    this.link(oid, id)
    const folder = this.folder(oidVid(oid))
    folder.flushTo(folder.mark())
    let e = this.records.get(oid)
    if (e === undefined) { e = { ...rec, savedVersion: rec.version, savedSize: rec.size }; this.records.set(oid, e) }
    this.putRecord(oid, e, rec, false, e => { e.version = e.savedVersion = rec.version; e.size = e.savedSize = rec.size })
    this.syncCatalog()
    return rec.version
  }

  async replace (oid: ObjectId, data: Uint8Array, version?: number): Promise<void> {
    const bytes = Buffer.from(data)
    await this.later('replace', () => { this.swapIn(oid, bytes, version) })
  }

  async compareAndReplace (oid: ObjectId, data: Uint8Array, expected: number): Promise<number> {
    const bytes = Buffer.from(data)
    // One at a time, as the local store's casTail.
    const run = this.casTail.then(async () => await this.later('compareAndReplace', () => {
      const current = this.records.get(oid)?.version ?? 0
      if (current !== expected) throw SheepError.conflict(`object ${oidToHex(oid)} is at version ${current}, not ${expected}`)
      return this.swapIn(oid, bytes)
    }))
    this.casTail = run.catch(() => {})
    return await run
  }

  async truncate (oid: ObjectId, size: number): Promise<void> {
    await this.later('truncate', () => {
      const { rec, id } = this.fileOf(oid)
      if (size === rec.size) return
      rec.version++
      if (size > rec.size) {
        // Grow: the file only; the size is in memory, recorded by the object's next sync.
        this.fileOp(id, { kind: 'size', size })
        rec.size = size
        return
      }
      // Shrink: the smaller record synced first (saveInfo), then the file cut (not synced).
      rec.size = size
      const info = { version: rec.version, size }
      this.putRecord(oid, rec, info, false, e => { e.savedVersion = Math.max(e.savedVersion, info.version); e.savedSize = info.size })
      this.syncCatalog()
      this.fileOp(id, { kind: 'size', size })
    })
  }

  async remove (oid: ObjectId): Promise<void> {
    await this.later('remove', () => {
      this.unlink(oid)
      if (this.records.has(oid)) this.delRecord(oid)
    })
  }

  /** What LocalObjectStore.setAside does: the file leaves the folder, then its record goes (not synced). */
  async setAside (oid: ObjectId): Promise<string> {
    return await this.later('setAside', () => {
      this.unlink(oid)
      if (this.records.has(oid)) this.delRecord(oid)
      return `strays/${oidToHex(oid)}`
    })
  }

  async stat (oid: ObjectId): Promise<ObjectInfo | null> {
    return await this.later('stat', () => {
      const rec = this.records.get(oid)
      return rec === undefined ? null : { oid, version: rec.version, size: rec.size }
    })
  }

  async * list (): AsyncIterable<ObjectInfo> {
    const all = await this.later('list', () => [...this.records].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([oid, rec]) => ({ oid, version: rec.version, size: rec.size })))
    for (const info of all) yield info
  }

  async sync (oids: Iterable<ObjectId>): Promise<void> {
    // Marks are taken at the call: durable is only what was made before it.
    const marks: SyncMarks = { files: [], folders: [], catalog: null, entries: [] }
    for (const oid of oids) {
      const e = this.records.get(oid)
      if (e !== undefined) marks.entries.push({ oid, e, size: e.size })
      const id = this.names.get(oid)
      // The local store fsyncs a closed object through its path: a missing file is an error.
      if (id === undefined) {
        const err = SheepError.notFound(`object ${oidToHex(oid)}`)
        await this.later('sync', () => { throw err })
      } else {
        marks.files.push([id, this.fileStreams.get(id)?.mark() ?? 0])
      }
    }
    for (const vid of this.newNames) marks.folders.push([vid, this.folder(vid).mark()])
    this.newNames.clear()
    if (this.recordsPending) marks.catalog = this.catalog.mark()
    this.recordsPending = false
    // A flush another sync has under way is waited for: its marks are this one's too.
    for (const other of this.underWay) {
      marks.folders.push(...other.folders)
      if (other.catalog !== null) marks.catalog = Math.max(marks.catalog ?? 0, other.catalog)
    }
    this.underWay.add(marks)
    await this.later('sync', () => {
      this.underWay.delete(marks)
      for (const [id, mark] of marks.files) this.fileStreams.get(id)?.flushTo(mark)
      for (const [vid, mark] of marks.folders) this.folder(vid).flushTo(mark)
      // Then, the files holding them, the sizes they had at the call that are larger than the
      // recorded ones: one synced batch (which makes every catalog write so far durable).
      const grown = marks.entries.filter(g => g.size > g.e.savedSize)
      for (const { oid, e, size } of grown) {
        const info = { version: e.version, size }
        this.putRecord(oid, e, info, false, e => { e.savedSize = Math.max(e.savedSize, info.size); e.savedVersion = Math.max(e.savedVersion, info.version) })
      }
      if (grown.length > 0) this.syncCatalog()
      if (marks.catalog !== null) this.catalog.flushTo(marks.catalog)
      // persistVersions: changed versions, without sync, never with a size larger than recorded.
      for (const { oid, e } of marks.entries) {
        if (e.version === e.savedVersion) continue
        const info = { version: e.version, size: Math.min(e.size, e.savedSize) }
        this.putRecord(oid, e, info, false, e => { e.savedVersion = Math.max(e.savedVersion, info.version) })
      }
    })
  }

  async usage (): Promise<StoreUsage> {
    return { capacity: 2 ** 40, free: 2 ** 39 }
  }

  /**
   * Lets `n` more calls have their effect, then none: later calls stay in flight until crash().
   * Resolves when a call finds the power gone. A cut between any two effects reaches every
   * state of the disk that a cut between two instructions of the image layer could.
   */
  cutAfter (n: number): Promise<void> {
    this.cutAt = this.effects + n
    return new Promise(resolve => { this.onCut = resolve })
  }

  /** Takes back cutAfter(), if no call found the power gone yet. */
  uncut (): void {
    this.cutAt = Infinity
    this.onCut = undefined
  }

  /** How many calls have not had their effect yet. */
  get inFlight (): number { return this.inflight.size }

  /**
   * The power cut: in-flight effects happen or not, then every operation not yet durable reached
   * the disk or not, each independently. Returns the store a restart finds; this one is dead.
   */
  crash (rng: Rng, opts: CrashOptions = {}): PowerCutStore {
    const pInflight = opts.inflight ?? 0.5
    for (const run of [...this.inflight]) {
      this.inflight.delete(run)
      if (rng.chance(pInflight)) run()
    }
    this.dead = true
    const p = opts.landed ?? rng.pick([0, 1, rng.next()])
    const records = this.catalog.crash(rng, p)
    const names = new Map<ObjectId, number>()
    for (const s of this.folders.values()) for (const [oid, id] of s.crash(rng, p)) names.set(oid, id)
    const files = new Map<number, FileState>()
    for (const id of new Set(names.values())) {
      files.set(id, this.fileStreams.get(id)?.crash(rng, p) ?? newFile())
    }
    return new PowerCutStore(rng.int(1, 2 ** 31), { records, names, files, nextFile: this.nextFile })
  }

  /**
   * A clean restart (no power cut): close() syncs the grown objects, then writes every version
   * with sync, so the new store starts from what reads see now.
   */
  restart (seed: number): PowerCutStore {
    this.dead = true
    const records = new Map([...this.records].map(([oid, e]) => [oid, { version: e.version, size: e.size }]))
    return new PowerCutStore(seed, { records, names: this.names, files: this.files, nextFile: this.nextFile })
  }
}

async function never<T> (): Promise<T> {
  return await new Promise<T>(() => {})
}
