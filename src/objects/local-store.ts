// One node's object store: each object is a file under objects/<vid>/, written in place with
// pread/pwrite, plus a classic-level catalog of (id, version, size).
//
// Crash rules: the catalog record is written before an object file is created and removed after
// it is unlinked, so every object file has a record. A record whose file is missing or shorter
// than its size is a corrupt object: reads of it fail with EIO, never return other bytes.
// Whole-object replacement goes through a temporary file and rename, so it is atomic.
// sync() returns once the objects' bytes, their files' names and every catalog write made before
// it are on disk (docs/ARCHITECTURE.md, "Crash safety", has the whole order). A record never
// claims more bytes than its file durably holds, whatever a power cut keeps: an object grows in
// memory and its larger size is recorded only once its file was synced, and a file found longer
// than its record (a growth never synced, a shrink whose cut was lost) is cut to it when loaded.
//
// Every 4 KiB chunk has a checksum (./checksums.ts), kept in memory while the object is in use
// and in the index beside its record; every read checks the chunks it reads, and a mismatch is
// EIO, logged and counted. The checksums are saved with the record that ends a write's dirty
// mark, in one batch: a record that is not dirty has checksums that match its file, after a
// process crash too. An object whose record a crash left dirty gets its checksums anew from its
// bytes when it is loaded, and so does every object after a crash of the machine (a power cut:
// the dirty marks are not synced, StoreMeta.generation), an object with none (a store from before
// checksums) and one whose checksums cannot be read.

import fs from 'node:fs'
import path from 'node:path'
import { SheepError, toSheepError } from '../errors'
import { failpoint } from '../failpoints'
import { Catalog, type CatalogRecord, type SumsRecord, type UnreadableRecord } from './catalog'
import { CHUNK, chunkRange, chunkSum, chunksOf, crc32, ObjectSums } from './checksums'
import { fdatasync, FileIo, type FileIoOptions, ftruncate, openFile, syncDir, syncPath } from './file-io'
import { type ObjectId, ObjectType, oidToHex, oidType, oidVid } from './oid'
import { SyncQueue } from './sync-queue'
import type { ObjectInfo, ObjectStore, StoreUsage } from './types'
import { VersionChains } from './version-chain'
import { nextVersion } from './versions'
import { writeFreshBySteps } from './write-fresh'

const FORMAT_FILE = 'FORMAT'
/** Where objects a start-up was in doubt about are kept for an operator (setAside). */
export const STRAYS_DIR = 'strays'
const FORMAT_LINE = 'sheep-store 1\n'
export const DEFAULT_MAX_OPEN_FILES = 512
/** verify() reads an object this much at a time. */
const VERIFY_PIECE = 1024 * 1024

export interface LocalStoreOptions {
  /** How many object files stay open between I/Os. */
  maxOpenFiles?: number
  /** When reads and writes run on the event loop's thread (./file-io.ts). */
  io?: FileIoOptions
  /** This boot of the machine (tests): a store found unclosed by another boot lost its page cache. */
  bootId?: string
  /** Where the store says that it takes checksums anew after a crash of the machine. */
  log?: (line: string) => void
  /** How long a writer's change waits for the one it was made on (./version-chain.ts): the writers' request timeout. */
  chainWaitMs?: number
}

/** What the checksums found since the store opened. */
export interface ChecksumStatus {
  /** Reads that found chunks whose bytes do not match their checksums. */
  mismatches: number
  /** Objects whose checksums were computed anew from their bytes (after a crash, or none were kept). */
  rebuilt: number
  /** The last mismatches found (object, first bad byte), newest last, at most 20. */
  recent: Array<{ oid: string, offset: number, at: string }>
}

interface Entry {
  info: ObjectInfo
  fd: number // -1 when closed
  inflight: number
  /** Version last written to the catalog. */
  savedVersion: number
  /** Size last written to the catalog: what the file durably holds, at least. */
  savedSize: number
  /** The record last put says dirty (asReplica): the file may hold writes newer than its version. */
  dirty: boolean
  /** Writes and truncates changing the file now. */
  writing: number
  /** The put that marks the record dirty, while it is on its way. */
  marking: Promise<void> | null
  /** The checksums of the file's chunks. */
  sums: ObjectSums
  /** sums.changes when they were last put in the index (-1: never, or they must be put again). */
  savedSums: number
  /** Bumped when a write or truncate begins and ends: a read that saw it change may have seen half of one. */
  writeSeq: number
  /** Chunks changed while other changes of the object were under way: summed once none is. */
  stale: Set<number>
  /** The chunks each change under way is changing (a truncate: all of them). */
  changing: ChunkSpan[]
}

/** Chunks [first, end) of an object. */
interface ChunkSpan { first: number, end: number }
/** What a truncate changes: whatever a write beside it touches. */
const EVERY_CHUNK: ChunkSpan = { first: 0, end: Infinity }

export class LocalObjectStore implements ObjectStore {
  readonly dir: string
  // Built in open(): classic-level creates its directory when constructed.
  private catalog!: Catalog
  private readonly entries = new Map<ObjectId, Entry>() // insertion order = least recently used first
  private readonly loading = new Map<ObjectId, Promise<Entry>>()
  /** Replaces, marks and erases in progress (the last of each object; see serially): a load waits for them. */
  private readonly replacing = new Map<ObjectId, Promise<void>>()
  private readonly maxOpenFiles: number
  private readonly io: FileIo
  private openFiles = 0
  /** Index records the last listing could not read. */
  private unreadable: UnreadableRecord[] = []
  private closed = false
  private casTail: Promise<void> = Promise.resolve()
  /** Object folders known to exist, so creating an object costs no mkdir. */
  private readonly dirs = new Set<string>()
  /** Folders that gained a name (a new object file or folder) since their last sync. */
  private readonly newNames = new SyncQueue<string>(async dirs => { await Promise.all(dirs.map(syncDirIfThere)) })
  /** Records that must reach the disk before a sync returns: new objects, changed sizes. */
  private readonly records = new SyncQueue<'catalog'>(async () => { await this.catalog.flush() })
  /** Every change gives a version above this (./versions.ts: the cluster's epoch; 0 on one host). */
  private versionFloor: () => number = () => 0
  /** The epoch of the node's view now: a change waiting for the one it was made on gives way once it moves (asReplica). */
  private viewEpoch: () => number = () => 0
  /** A cluster's replica (asReplica): dirty records of new objects, tombstones. */
  private replica = false
  /** Raised when the machine crashed with the store open (see the note at the top); checksums from before are not trusted. */
  private generation = 0
  private readonly bootId: string | undefined
  private readonly log: (line: string) => void
  private readonly checksums: ChecksumStatus = { mismatches: 0, rebuilt: 0, recent: [] }
  /** Objects whose record a crash left dirty: their version does not say which bytes they hold. */
  private readonly uncertain = new Set<ObjectId>()
  /** Copies marked missed (setMissed), until a replace, a remove or an unmark. */
  private readonly missed = new Set<ObjectId>()
  /** Writers' changes made on a version, applied in the order of their versions (./version-chain.ts). */
  private readonly chains: VersionChains

  constructor (dir: string, opts: LocalStoreOptions = {}) {
    this.dir = path.resolve(dir)
    this.maxOpenFiles = opts.maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES
    this.io = new FileIo(opts.io)
    this.bootId = opts.bootId
    this.log = opts.log ?? (() => {})
    this.chains = new VersionChains(opts.chainWaitMs)
  }

  /**
   * This store holds a cluster's replicas: versions of changes from now on order above floor()
   * (./versions.ts epochFloor; it moves to a new view's once the changes let in under the view
   * before are done, src/swarm/recovery.ts stampEpoch), view() is the epoch of the node's view
   * now, and an object's record is marked dirty before its file changes,
   * until a sync records the version its bytes have. So a crash cannot leave two replicas with
   * different bytes at one version unnoticed: an object whose record a crash left dirty is
   * uncertain (stat, list) until recovery settles it or replaces it (src/swarm/recovery.ts).
   * A process crash only: a power cut may lose the mark with the bytes kept (not handled yet).
   */
  async asReplica (floor: () => number, view: () => number): Promise<void> {
    this.versionFloor = floor
    this.viewEpoch = view
    this.replica = true
    const gone: CatalogRecord[] = []
    for await (const r of this.catalog.list()) {
      if (r.missed === true) this.missed.add(r.oid)
      if (r.dirty !== true || r.removed === true) continue
      if (await exists(this.objectPath(r.oid))) this.uncertain.add(r.oid)
      else gone.push(r)
    }
    // A create the crash cut between its record and its file: nothing was synced into it (a sync
    // leaves the record clean), so no copy of it holds anything acknowledged. It stays a tombstone
    // just below its version, in case it stood on the tombstone of an earlier copy: that copy must
    // not come back, and the other replicas' copies of the create, at its version or above, win.
    if (gone.length > 0) await this.catalog.put(gone.map(r => ({ oid: r.oid, version: Math.max(0, r.version - 1), size: 0, removed: true })), true)
  }

  /**
   * Recovery chose this node's copy of an uncertain object as the one every replica gets: it
   * gets a version above every other copy's in this epoch and a clean record.
   */
  async settle (oid: ObjectId): Promise<void> {
    if (!this.uncertain.has(oid)) return
    const e = await this.acquire(oid)
    try {
      e.info.version = this.bump(e.info.version)
      await this.putRecords([{ e, size: Math.min(e.info.size, e.savedSize) }], false)
      e.savedVersion = e.info.version
      this.uncertain.delete(oid)
    } finally {
      this.release(e)
      this.chains.wake(oid)
    }
  }

  /**
   * The record to put for e, with `size`; dirty while a write is changing its file. Takes effect
   * at once: puts land in the order they are made.
   */
  private recordOf (e: Entry, size: number): CatalogRecord {
    e.dirty = e.writing > 0
    return { oid: e.info.oid, version: e.info.version, size, dirty: e.dirty, missed: this.missed.has(e.info.oid) }
  }

  /**
   * Puts records of these entries (recordOf) with the checksums of those a record leaves clean and
   * whose checksums changed since last put: one batch, so that a clean record always has them.
   */
  private async putRecords (entries: Array<{ e: Entry, size: number }>, sync: boolean): Promise<CatalogRecord[]> {
    const records = entries.map(({ e, size }) => this.recordOf(e, size))
    const sums: SumsRecord[] = []
    const saved: Array<{ e: Entry, changes: number }> = []
    for (const [i, { e, size }] of entries.entries()) {
      if ((records[i] as CatalogRecord).dirty === true || e.savedSums === e.sums.changes) continue
      // A record short of the object (its growth is not synced yet): a crash cuts the file to it,
      // and the chunk it ends in changes. Generation 0 has them taken anew from the file then.
      const short = size < e.info.size
      sums.push({ oid: e.info.oid, generation: short ? 0 : this.generation, sums: e.sums.encode(e.info.size) })
      if (!short) saved.push({ e, changes: e.sums.changes })
    }
    await this.catalog.put(records, sync, sums)
    for (const { e, changes } of saved) e.savedSums = changes
    return records
  }

  /**
   * Marks these copies as behind the other replicas' (this disk failed a change they took, or
   * recovery found a newer copy elsewhere), or no longer so: each says it in its record, durably.
   * A replace or a remove clears the mark too. So a restart does not make a copy that is behind
   * look current (src/swarm/recovery.ts). With `below`, a copy is marked only while its version is
   * below the one given for it: a whole copy may have replaced it since it was found behind.
   */
  async setMissed (oids: Iterable<ObjectId>, missed: boolean, below?: ReadonlyMap<ObjectId, number>): Promise<void> {
    this.checkOpen()
    const list = [...oids]
    // In each object's chain: a replace or erase between the record read here and the one put
    // would have its record put back.
    await this.serially(list, async () => {
      const records: CatalogRecord[] = []
      for (const oid of list) {
        if (this.missed.has(oid) === missed) continue
        const e = this.entries.get(oid)
        const r = e === undefined ? await this.catalog.get(oid) : { oid, version: e.savedVersion, size: e.savedSize, dirty: e.dirty }
        if (r === null || r.removed === true) continue
        const newer = below?.get(oid)
        if (missed && newer !== undefined && (e?.info.version ?? r.version) >= newer) continue
        if (missed) this.missed.add(oid)
        else this.missed.delete(oid)
        records.push({ ...r, missed })
      }
      if (records.length > 0) await this.catalog.put(records, true)
    })
  }

  /**
   * Runs fn after the replaces, marks and erases of these objects begun before it (and `also`),
   * and before those begun after: each reads an object's record and puts a new one.
   */
  private async serially<T> (oids: ObjectId[], fn: () => Promise<T>, also: Array<Promise<unknown> | undefined> = []): Promise<T> {
    const before = [...oids.map(oid => this.replacing.get(oid)), ...also]
    const run = (async () => {
      for (const p of before) await p?.catch(() => {})
      return await fn()
    })()
    const tail = run.then(() => {}, () => {})
    for (const oid of oids) this.replacing.set(oid, tail)
    try {
      return await run
    } finally {
      for (const oid of oids) if (this.replacing.get(oid) === tail) this.replacing.delete(oid)
    }
  }

  /**
   * Before a write or truncate changes e's file: its record says dirty first, so that a crash
   * leaves neither a replica's version (asReplica) nor the checksums taken for the bytes' own.
   */
  private async beginWrite (e: Entry, span: ChunkSpan): Promise<void> {
    e.changing.push(span)
    e.writing++
    e.writeSeq++
    if (!e.dirty) {
      e.dirty = true
      e.marking = this.catalog.put([{ oid: e.info.oid, version: e.savedVersion, size: e.savedSize, dirty: true, missed: this.missed.has(e.info.oid) }]).catch(err => {
        e.dirty = false
        e.marking = null
        throw err
      })
    }
    await e.marking
  }

  private bump (version: number): number {
    return nextVersion(version, this.versionFloor())
  }

  /** Opens (or initialises) the store. EBUSY when another daemon holds it. */
  async open (): Promise<void> {
    await fs.promises.mkdir(this.dir, { recursive: true })
    if (!await LocalObjectStore.check(this.dir)) await fs.promises.writeFile(path.join(this.dir, FORMAT_FILE), FORMAT_LINE)
    await fs.promises.mkdir(path.join(this.dir, 'objects'), { recursive: true })
    this.catalog = new Catalog(path.join(this.dir, 'index'))
    await this.catalog.open()
    try {
      const boot = this.bootId ?? (await readIfExists('/proc/sys/kernel/random/boot_id'))?.trim() ?? ''
      const meta = await this.catalog.getMeta()
      this.generation = meta?.generation ?? 1
      if (meta !== null && !meta.clean && meta.bootId !== boot) {
        this.generation++
        this.log(`the machine stopped with the store open (a power cut or a crash): each object's checksums are taken anew from its bytes when it is next used; a chunk damaged before that is not found by them`)
      }
      await this.catalog.putMeta({ generation: this.generation, bootId: boot, clean: false })
    } catch (err) {
      await this.catalog.close()
      throw err
    }
  }

  /** What the checksums found since the store opened. */
  checksumStatus (): ChecksumStatus {
    return { ...this.checksums, recent: [...this.checksums.recent] }
  }

  /**
   * Whether `dir` is a store (true) or may become one (false: missing, or empty but for a log);
   * throws EINVAL for anything else, which a store must never overwrite.
   */
  static async check (dir: string): Promise<boolean> {
    const format = await readIfExists(path.join(dir, FORMAT_FILE))
    if (format === FORMAT_LINE) return true
    if (format !== null) throw SheepError.invalid(`${dir} holds an unknown store format: ${JSON.stringify(format.trim())}`)
    let present: string[]
    try {
      present = await fs.promises.readdir(dir)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
      throw SheepError.invalid(`${dir} cannot be a store: ${(err as Error).message}`)
    }
    if (present.some(n => n !== 'lost+found' && n !== 'sheep.log')) throw SheepError.invalid(`${dir} is not empty and is not a sheep store`)
    return false
  }

  async close (): Promise<void> {
    if (this.closed) return
    // Grown objects' files first: their sizes are recorded only once the files hold them.
    await this.sync([...this.entries.values()].filter(e => e.info.size > e.savedSize).map(e => e.info.oid))
    this.closed = true
    // Calls under way end first: a descriptor closed under a write queued in the pool is a number
    // the next open takes, and the write lands in that file (another store's, in one process).
    for (const e of this.entries.values()) while (e.inflight > 0) await this.waitIdle(e)
    await this.persistVersions([...this.entries.values()], true)
    for (const e of this.entries.values()) this.closeFd(e)
    this.entries.clear()
    await this.catalog.putMeta({ generation: this.generation, bootId: this.bootId ?? (await readIfExists('/proc/sys/kernel/random/boot_id'))?.trim() ?? '', clean: true })
    await this.catalog.close()
  }

  private objectPath (oid: ObjectId): string {
    return path.join(this.dir, 'objects', oidVid(oid).toString(16).padStart(6, '0'), oidToHex(oid))
  }

  async create (oid: ObjectId, size: number): Promise<void> {
    this.checkOpen()
    const prior = this.entries.has(oid) ? null : await this.catalog.get(oid)
    if (this.entries.has(oid) || (prior !== null && prior.removed !== true)) throw SheepError.exists(`object ${oidToHex(oid)}`)
    // Above the tombstone of the copy removed before, if there is one: this one is newer.
    const info: ObjectInfo = { oid, version: this.bump(prior?.version ?? 0), size }
    this.records.add('catalog')
    const sums = new ObjectSums()
    // A replica's is dirty until a sync: a crash before the file exists must not leave a copy that looks whole.
    await this.catalog.put([{ ...info, dirty: this.replica }], false, this.replica ? [] : [{ oid, generation: this.generation, sums: sums.encode(0) }])
    const file = this.objectPath(oid)
    await this.ensureDir(path.dirname(file))
    this.newNames.add(path.dirname(file))
    let fd: number
    try {
      fd = await openFile(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC)
      await ftruncate(fd, size)
    } catch (err) {
      throw toSheepError(err)
    }
    this.uncertain.delete(oid)
    this.remember({ info, fd, inflight: 0, savedVersion: info.version, savedSize: size, dirty: this.replica, writing: 0, marking: null, sums, savedSums: this.replica ? -1 : 0, writeSeq: 0, stale: new Set(), changing: [] })
    this.chains.wake(oid)
  }

  async writeFresh (oid: ObjectId, size: number, offset: number, data: Uint8Array): Promise<void> {
    await writeFreshBySteps(this, oid, size, offset, data)
  }

  async read (oid: ObjectId, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
    const e = await this.acquire(oid)
    try {
      await this.readEntry(e, offset, length, target, targetOffset)
    } finally {
      this.release(e)
    }
  }

  /**
   * Reads the whole chunks the range touches (into target itself when the range is whole chunks)
   * and checks them against their checksums. A mismatch while a change of the object was under
   * way may be half of that change, which the reader may see: only one with none is corruption.
   */
  private async readEntry (e: Entry, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
    const oid = e.info.oid
    try {
      if (offset + length > e.info.size) throw SheepError.invalid(`read past the end of object ${oidToHex(oid)}: bytes ${offset} to ${offset + length} of ${e.info.size}`)
      const { first, end } = chunkRange(offset, length)
      const from = first * CHUNK
      const to = Math.min(end * CHUNK, e.info.size)
      const whole = from === offset && to === offset + length
      const buf = whole ? target.subarray(targetOffset, targetOffset + length) : Buffer.allocUnsafe(to - from)
      const seq = e.writeSeq
      await this.readFile(e, buf, from)
      const bad = e.sums.mismatches(first, buf)
      if (bad.length > 0 && e.writing === 0 && e.writeSeq === seq) throw this.mismatch(e, bad)
      if (!whole) target.set(buf.subarray(offset - from, offset - from + length), targetOffset)
    } catch (err) {
      throw toSheepError(err)
    }
  }

  private async readFile (e: Entry, buf: Uint8Array, position: number): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const n = await this.io.read(e.fd, buf, done, buf.length - done, position + done)
      if (n === 0) throw SheepError.corrupt(`object ${oidToHex(e.info.oid)} is truncated: its file ends before byte ${position + done}`)
      done += n
    }
  }

  private mismatch (e: Entry, bad: number[]): SheepError {
    const oid = oidToHex(e.info.oid)
    const offset = (bad[0] as number) * CHUNK
    this.checksums.mismatches++
    this.checksums.recent.push({ oid, offset, at: new Date().toISOString() })
    if (this.checksums.recent.length > 20) this.checksums.recent.shift()
    const where = bad.length === 1 ? `the 4 KiB at byte ${offset}` : `${bad.length} chunks of 4 KiB from byte ${offset}`
    // Logged by whoever gets the EIO: the FUSE layer (src/fuse/errno.ts), recovery's heal.
    return SheepError.corrupt(`object ${oid}: ${where} do not match their checksums`)
  }

  /** Sets the checksum of chunk c from the file's bytes (it holds no change under way). */
  private resum (e: Entry, c: number): void {
    const start = c * CHUNK
    const n = Math.min(CHUNK, e.info.size - start)
    if (n <= 0) return
    const buf = Buffer.allocUnsafe(n)
    for (let done = 0; done < n;) {
      const got = fs.readSync(e.fd, buf, done, n - done, start + done)
      if (got === 0) throw SheepError.corrupt(`object ${oidToHex(e.info.oid)} is truncated: its file ends before byte ${start + done}`)
      done += got
    }
    e.sums.set(c, chunkSum(buf))
  }

  /**
   * The checksums of the chunks a write of `data` at `offset` (span `mine`) changed, once it is
   * in the file: whole chunks from data, partial ones from the file. A chunk another change under
   * way is changing too may hold half of it in the file: such chunks wait until none is
   * (endChange). Writes beside each other into other chunks (a guest's queue) do not wait.
   */
  private summed (e: Entry, offset: number, data: Uint8Array, mine: ChunkSpan): void {
    const { first, end } = chunkRange(offset, data.length)
    const others = e.changing.length > 1 ? e.changing.filter(s => s !== mine && s.first < end && first < s.end) : []
    for (let c = first; c < end; c++) {
      const start = c * CHUNK
      if (others.some(s => s.first <= c && c < s.end)) e.stale.add(c)
      else if (start >= offset && start + CHUNK <= offset + data.length) e.sums.set(c, chunkSum(data.subarray(start - offset, start - offset + CHUNK)))
      else this.resum(e, c)
    }
  }

  /** A write or truncate of e is over: the chunks changed meanwhile get their checksums once no other is under way. */
  private endChange (e: Entry, span: ChunkSpan): void {
    e.changing.splice(e.changing.indexOf(span), 1)
    e.writing--
    e.writeSeq++
    if (e.writing > 0 || e.stale.size === 0) return
    const stale = [...e.stale]
    e.stale.clear()
    for (const c of stale) {
      try {
        this.resum(e, c)
      } catch (err) {
        // The file is shorter than the object (reads of it fail) or the disk failed the read.
        this.log(`object ${oidToHex(e.info.oid)}: cannot take the checksum of the 4 KiB at byte ${c * CHUNK}: ${(err as Error).message}`)
      }
    }
  }

  /**
   * Reads the whole object, checking every chunk (EIO on a mismatch, as a read): its version,
   * size, and a digest of its bytes (a CRC-32 of its chunks' checksums) to compare copies by.
   */
  async verify (oid: ObjectId): Promise<{ version: number, size: number, digest: number }> {
    const e = await this.acquire(oid)
    try {
      const size = e.info.size
      const version = e.info.version
      const piece = Buffer.allocUnsafe(Math.min(size, VERIFY_PIECE))
      for (let at = 0; at < size; at += piece.length) await this.readEntry(e, at, Math.min(piece.length, size - at), piece, 0)
      return { version, size, digest: crc32(e.sums.encode(size)) }
    } finally {
      this.release(e)
    }
  }

  async write (oid: ObjectId, offset: number, data: Uint8Array, base = 0): Promise<void> {
    const entered = await this.enter(oid, base, false)
    if (entered === null) return
    const { e, version } = entered
    const span = chunkRange(offset, data.length)
    try {
      await this.beginWrite(e, span)
      let done = 0
      while (done < data.length) {
        done += await this.io.write(e.fd, data, done, data.length - done, offset + done)
      }
      if (version === undefined) e.info.version = this.bump(e.info.version)
      // Recorded by the next sync, after the file's growth is on disk.
      if (offset + data.length > e.info.size) e.info.size = offset + data.length
      this.summed(e, offset, data, span)
    } catch (err) {
      // Some of it may be in the file: its chunks' checksums are taken from what is there.
      const { first, end } = chunkRange(offset, data.length)
      for (let c = first; c < end; c++) e.stale.add(c)
      throw toSheepError(err)
    } finally {
      this.endChange(e, span)
      this.unchain(oid, version, e)
      this.release(e)
    }
  }

  /**
   * For a change made on version `base` (a writer's, ./version-chain.ts; 0: any, counted here):
   * the version it gives the object, undefined to count it, null when the copy holds it already.
   */
  private async chained (oid: ObjectId, base: number, alone: boolean): Promise<number | null | undefined> {
    if (base === 0) return undefined
    const version = nextVersion(base, this.versionFloor())
    const current = (): number | null | Promise<number | null> => {
      this.checkOpen()
      const e = this.entries.get(oid)
      if (e !== undefined) return e.info.version
      return this.catalog.get(oid).then(r => r === null || r.removed === true ? null : r.version)
    }
    const epoch = this.viewEpoch()
    return await this.chains.admit(oid, base, version, alone, current, () => this.viewEpoch() === epoch) ? version : null
  }

  /**
   * A write or truncate made on `base` let in (chained) and its entry pinned; null when the copy
   * holds the change already. `version`: what it gives the object, undefined to count it.
   */
  private async enter (oid: ObjectId, base: number, alone: boolean): Promise<{ e: Entry, version: number | undefined } | null> {
    const version = await this.chained(oid, base, alone)
    if (version === null) return null
    try {
      return { e: await this.acquire(oid), version }
    } catch (err) {
      this.unchain(oid, version)
      throw err
    }
  }

  /** A change of oid is over: a writer's moves the copy's version once those before it are done too. */
  private unchain (oid: ObjectId, version: number | undefined, e?: Entry): void {
    if (version === undefined) return this.chains.wake(oid)
    const reached = this.chains.finish(oid, version)
    if (e !== undefined && reached !== null && reached > e.info.version) e.info.version = reached
  }

  async readAll (oid: ObjectId): Promise<Buffer> {
    // Size and bytes from one descriptor: a replace swapping the file meanwhile cannot tear them.
    const e = await this.acquire(oid)
    try {
      const buf = Buffer.alloc(e.info.size)
      await this.readEntry(e, 0, buf.length, buf, 0)
      return buf
    } finally {
      this.release(e)
    }
  }

  async replace (oid: ObjectId, data: Uint8Array, version?: number): Promise<void> {
    this.checkOpen()
    // A load reads the record, then opens the file: one running across the swap would pair the
    // new file with the old size (a torn readAll). Loads begun before wait here, later ones in
    // load(); replaces of one object go one after the other.
    await this.serially([oid], async () => await this.swapIn(oid, data, version), [this.loading.get(oid)])
  }

  private async swapIn (oid: ObjectId, data: Uint8Array, version?: number): Promise<void> {
    const file = this.objectPath(oid)
    const tmp = file + '.tmp'
    const known = this.entries.get(oid)?.info ?? await this.catalog.get(oid)
    const old = known?.removed === true ? null : known
    // A copy at a version the object was removed at or after must not come back.
    if (version !== undefined && known?.removed === true && known.version >= version) throw SheepError.notFound(`object ${oidToHex(oid)}: removed at version ${known.version}, after the copy's version ${version}`)
    const info: ObjectInfo = { oid, version: version ?? this.bump(known?.version ?? 0), size: data.length }
    const sums = ObjectSums.of(data)
    await this.ensureDir(path.dirname(file))
    try {
      const fd = await openFile(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC)
      try {
        // Sparse: chunks of zeros stay holes, so a copy (recovery's, a heal's) allocates what its source does.
        await ftruncate(fd, data.length)
        for (const [start, end] of dataRuns(data)) {
          for (let done = start; done < end;) done += await this.io.write(fd, data, done, end - done, done)
        }
        await fdatasync(fd)
      } finally {
        fs.closeSync(fd)
      }
      // The record's size never exceeds the file's, whichever step a crash interrupts: shrink the
      // record to fit both files, swap the files, then record the new object.
      const fits = Math.min(old?.size ?? 0, data.length)
      if (old === null || fits < old.size) await this.catalog.put([{ oid, version: known?.version ?? 0, size: fits, missed: this.missed.has(oid) }], true)
      // The old file's checksums go before it does: a crash after the swap finds none, and takes them from the new file.
      await this.catalog.delSums(oid)
      await fs.promises.rename(tmp, file)
      // The new name must be on disk before the record that describes the new file.
      await syncDir(path.dirname(file))
      await this.catalog.put([info], true, [{ oid, generation: this.generation, sums: sums.encode(data.length) }])
      this.uncertain.delete(oid)
      this.missed.delete(oid)
    } catch (err) {
      throw toSheepError(err)
    }
    const e = this.entries.get(oid)
    if (e) {
      // The old fd points at the replaced file; reopen on next use. A read may take the entry
      // between the last release and this continuation: wait again, then change it at once.
      while (e.inflight > 0) await this.waitIdle(e)
      this.closeFd(e)
      e.info = info
      e.savedVersion = info.version
      e.savedSize = info.size
      e.dirty = false
      e.sums = sums
      e.savedSums = sums.changes
      e.stale.clear()
    }
    this.chains.reset(oid)
  }

  async compareAndReplace (oid: ObjectId, data: Uint8Array, expected: number): Promise<number> {
    // One compare-and-replace at a time, so no other can slip between the check and the replace.
    const run = this.casTail.then(async () => {
      const current = (await this.stat(oid))?.version ?? 0
      if (current !== expected) throw SheepError.conflict(`object ${oidToHex(oid)} is at version ${current}, not ${expected}`)
      const version = this.bump(current)
      await this.replace(oid, data, version)
      return version
    })
    this.casTail = run.then(() => {}, () => {})
    return await run
  }

  async truncate (oid: ObjectId, size: number, base = 0): Promise<void> {
    const entered = await this.enter(oid, base, true)
    if (entered === null) return
    const { e, version } = entered
    let began = false
    try {
      const old = e.info.size
      // A writer's change takes its version though it changes nothing (unchain): the next is made on it.
      if (size === old) return
      began = true
      await this.beginWrite(e, EVERY_CHUNK)
      // The record never claims more than the file holds: a growth is recorded by the next sync;
      // a shrink is recorded, durably, before the file is cut. (A truncate goes alone: its
      // version is the copy's from here on.)
      e.info.version = version ?? this.bump(e.info.version)
      if (size > old) {
        // The chunks it grows over read as zeros, as their checksums say already.
        await ftruncate(e.fd, size)
        e.info.size = size
        return
      }
      // Bytes up to the new end that the file gained since its size was last recorded are not
      // durable yet: the smaller record must not claim them before they are.
      if (size > e.savedSize) await fdatasync(e.fd)
      e.info.size = size
      await this.saveInfo(e)
      await ftruncate(e.fd, size)
      e.sums.cut(chunksOf(size))
      // The chunk the object now ends in reads zeros past the end.
      if (size % CHUNK !== 0) e.stale.add(Math.floor(size / CHUNK))
    } catch (err) {
      throw toSheepError(err)
    } finally {
      if (began) this.endChange(e, EVERY_CHUNK)
      this.unchain(oid, version, e)
      this.release(e)
    }
  }

  async remove (oid: ObjectId): Promise<void> {
    // A cluster's replica keeps a tombstone, also of an object it did not hold: a copy that comes
    // back from a node that was away is older than the remove, not the newest there is.
    await this.erase(oid, this.replica)
  }

  /**
   * Forgets this node's copy of an object without a tombstone: placement gave the object to other
   * members, which hold it (src/swarm/recovery.ts). A tombstone here would be newer than theirs.
   */
  async drop (oid: ObjectId): Promise<void> {
    await this.erase(oid, false)
  }

  private async erase (oid: ObjectId, tombstone: boolean): Promise<void> {
    this.checkOpen()
    await this.serially([oid], async () => await this.eraseNow(oid, tombstone))
  }

  private async eraseNow (oid: ObjectId, tombstone: boolean): Promise<void> {
    const known = this.entries.get(oid)?.info ?? await this.catalog.get(oid)
    await this.forget(oid)
    const file = this.objectPath(oid)
    await fs.promises.rm(file, { force: true })
    if (tombstone) {
      await this.catalog.delSums(oid)
      await this.catalog.put([{ oid, version: this.bump(known?.version ?? 0), size: 0, removed: true }])
    } else {
      await this.catalog.del(oid)
    }
    this.uncertain.delete(oid)
    this.missed.delete(oid)
    this.chains.reset(oid)
    // An image's folder goes with its inode, or with its token record, the last objects of it to be deleted.
    if (oidType(oid) === ObjectType.Inode || oidType(oid) === ObjectType.Token) {
      this.dirs.delete(path.dirname(file))
      await fs.promises.rmdir(path.dirname(file)).catch(() => {})
    }
  }

  async stat (oid: ObjectId): Promise<ObjectInfo | null> {
    this.checkOpen()
    const e = this.entries.get(oid)
    const r = e?.info ?? await this.catalog.get(oid)
    return r === null || r.removed === true ? null : this.infoOf(r)
  }

  /**
   * Drops the tombstone of oid if it is still one at `version` or below: every replica that could
   * hold a copy has seen the remove (src/swarm/recovery.ts).
   */
  async dropTombstone (oid: ObjectId, version: number): Promise<void> {
    this.checkOpen()
    if (this.entries.has(oid)) return
    const r = await this.catalog.get(oid)
    if (r?.removed === true && r.version <= version) await this.catalog.del(oid)
  }

  /** What stat and list say of an object: its version, size, and whether a crash left it uncertain or it is a tombstone. */
  private infoOf (r: CatalogRecord): ObjectInfo {
    const info: ObjectInfo = { oid: r.oid, version: r.version, size: r.size }
    if (r.removed === true) info.removed = true
    else if (this.uncertain.has(r.oid)) info.uncertain = true
    if (this.missed.has(r.oid)) info.missed = true
    return info
  }

  async * list (from?: ObjectId, until?: ObjectId): AsyncIterable<ObjectInfo> {
    this.checkOpen()
    const unreadable: UnreadableRecord[] = []
    for await (const info of this.catalog.list(from, unreadable, until)) {
      yield this.infoOf(this.entries.get(info.oid)?.info ?? info)
    }
    // Only a listing of the whole store says what is unreadable in it.
    if (from === undefined && until === undefined) this.unreadable = unreadable
  }

  /** Damage the last listing found: index records that cannot be read (their objects are left alone). */
  problems (): string[] {
    return this.unreadable.map(r => `store index record ${JSON.stringify(r.key)} is unreadable (${r.reason}); its object is kept as it is`)
  }

  /**
   * Moves an object out of the store into strays/, keeping its bytes for an operator: what a
   * start-up does with an object it cannot prove unreferenced. Returns the file's new path.
   */
  async setAside (oid: ObjectId): Promise<string> {
    this.checkOpen()
    await this.forget(oid)
    const strays = path.join(this.dir, STRAYS_DIR)
    await fs.promises.mkdir(strays, { recursive: true })
    let target = path.join(strays, oidToHex(oid))
    for (let n = 1; await exists(target); n++) target = path.join(strays, `${oidToHex(oid)}.${n}`)
    try {
      await fs.promises.rename(this.objectPath(oid), target)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw toSheepError(err)
    }
    await syncDir(strays)
    await this.catalog.del(oid)
    return target
  }

  /** The objects set aside so far, and the bytes they occupy. */
  async strays (): Promise<{ dir: string, objects: number, bytes: number }> {
    const dir = path.join(this.dir, STRAYS_DIR)
    let objects = 0
    let bytes = 0
    let names: string[] = []
    try {
      names = await fs.promises.readdir(dir)
    } catch {}
    for (const name of names) {
      try {
        bytes += (await fs.promises.stat(path.join(dir, name))).blocks * 512
        objects++
      } catch {}
    }
    return { dir, objects, bytes }
  }

  async sync (oids: Iterable<ObjectId>): Promise<void> {
    this.checkOpen()
    const synced: Entry[] = []
    /** Each synced entry's size when its sync began: what the file holds once it is done. */
    const sizes: number[] = []
    const work: Promise<void>[] = []
    for (const oid of oids) {
      const e = this.entries.get(oid)
      if (e) {
        synced.push(e)
        sizes.push(e.info.size)
      }
      if (e && e.fd >= 0) {
        e.inflight++
        work.push(fdatasync(e.fd).finally(() => this.release(e)))
      } else {
        // Closed since it was written: fsync through a new descriptor of the same file.
        work.push(this.syncClosed(oid))
      }
    }
    work.push(this.newNames.sync())
    try {
      await Promise.all(work)
      failpoint('store-sync:after-files')
      // Records of new objects, and sizes the files now hold, must be durable before anything
      // that refers to them is. Versions alone are not worth a disk sync of the index (they
      // survive a process crash, not a power cut: docs/ARCHITECTURE.md).
      const grown = synced.map((e, i) => ({ e, size: sizes[i] as number })).filter(g => g.size > g.e.savedSize)
      if (grown.length > 0) {
        const infos = await this.putRecords(grown, true)
        for (const [i, { e }] of grown.entries()) {
          const info = infos[i] as ObjectInfo
          e.savedSize = Math.max(e.savedSize, info.size)
          e.savedVersion = Math.max(e.savedVersion, info.version)
        }
      }
      await this.records.sync()
      failpoint('store-sync:after-records')
    } catch (err) {
      throw toSheepError(err)
    }
    await this.persistVersions(synced, false)
  }

  /**
   * Syncs an object whose descriptor was closed since it was written. Its file may be gone with
   * it: a replica's copy dropped or removed since (placement moved it, the image was deleted), or
   * one not copied here yet. Nothing of it is here to sync then; a file gone under a live record
   * is damage (EIO), never "no such object".
   */
  private async syncClosed (oid: ObjectId): Promise<void> {
    try {
      await syncPath(this.objectPath(oid))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      const r = this.entries.get(oid)?.info ?? await this.catalog.get(oid)
      if (r !== null && r.removed !== true) throw SheepError.corrupt(`object ${oidToHex(oid)} is missing from the store: its file is gone`)
    }
  }

  async usage (): Promise<StoreUsage> {
    const s = await fs.promises.statfs(this.dir)
    return { capacity: s.blocks * s.bsize, free: s.bavail * s.bsize }
  }

  /** Bytes the object files really occupy on disk (their allocated blocks). */
  async allocatedBytes (): Promise<{ objects: number, bytes: number }> {
    let objects = 0
    let bytes = 0
    for await (const info of this.catalog.list()) {
      if (info.removed === true) continue
      objects++
      try {
        bytes += (await fs.promises.stat(this.objectPath(info.oid))).blocks * 512
      } catch {}
    }
    return { objects, bytes }
  }

  /** Records a shrunk entry durably: its file is cut only after this. */
  private async saveInfo (e: Entry): Promise<void> {
    const [info] = await this.putRecords([{ e, size: e.info.size }], true) as [CatalogRecord]
    if (info.version > e.savedVersion) e.savedVersion = info.version
    e.savedSize = info.size
  }

  /** Records the entries' versions, with the sizes last recorded (a larger one waits for its file's sync). */
  private async persistVersions (entries: Entry[], sync: boolean): Promise<void> {
    const changed = entries.filter(e => e.info.version !== e.savedVersion || (e.dirty && e.writing === 0))
    if (changed.length === 0) {
      if (sync) await this.catalog.flush()
      return
    }
    const infos = await this.putRecords(changed.map(e => ({ e, size: Math.min(e.info.size, e.savedSize) })), sync)
    for (let i = 0; i < changed.length; i++) {
      const e = changed[i] as Entry
      e.savedVersion = Math.max(e.savedVersion, (infos[i] as ObjectInfo).version)
      if (e.fd < 0 && e.inflight === 0 && this.saved(e)) this.entries.delete(e.info.oid)
    }
  }

  private async ensureDir (dir: string): Promise<void> {
    if (this.dirs.has(dir)) return
    await fs.promises.mkdir(dir, { recursive: true })
    this.dirs.add(dir)
    this.newNames.add(path.dirname(dir))
  }

  private checkOpen (): void {
    if (this.closed) throw SheepError.closing()
  }

  /** The entry with an open descriptor, pinned until release(). */
  private async acquire (oid: ObjectId): Promise<Entry> {
    this.checkOpen()
    let e = this.entries.get(oid)
    // Another object's load may evict this descriptor before this continuation runs: check again.
    while (e === undefined || e.fd < 0) e = await this.load(oid)
    e.inflight++
    // Most recently used goes last.
    this.entries.delete(oid)
    this.entries.set(oid, e)
    return e
  }

  private release (e: Entry): void {
    e.inflight--
    const idle = (e as Entry & { idle?: () => void }).idle
    if (e.inflight === 0 && idle) idle()
  }

  private waitIdle (e: Entry): Promise<void> {
    if (e.inflight === 0) return Promise.resolve()
    return new Promise(resolve => {
      const holder = e as Entry & { idle?: () => void }
      const prev = holder.idle
      holder.idle = () => { holder.idle = prev; prev?.(); resolve() }
    })
  }

  private load (oid: ObjectId): Promise<Entry> {
    let p = this.loading.get(oid)
    if (p === undefined) {
      const replacing = this.replacing.get(oid)
      p = (replacing === undefined ? this.loadEntry(oid) : replacing.then(async () => await this.loadEntry(oid)))
        .finally(() => this.loading.delete(oid))
      this.loading.set(oid, p)
    }
    return p
  }

  private async loadEntry (oid: ObjectId): Promise<Entry> {
    const known = this.entries.get(oid)
    const record = known === undefined ? await this.catalog.get(oid) : null
    const info = known?.info ?? (record === null || record.removed === true ? null : { oid, version: record.version, size: record.size })
    if (info === null) throw SheepError.notFound(`object ${oidToHex(oid)}`)
    let fd: number
    try {
      fd = await openFile(this.objectPath(oid), fs.constants.O_RDWR)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw SheepError.corrupt(`object ${oidToHex(oid)} is missing from the store: its file is gone`)
      throw toSheepError(err)
    }
    const st = await new Promise<fs.Stats>((resolve, reject) => fs.fstat(fd, (err, s) => err ? reject(err) : resolve(s)))
    if (st.size < info.size) {
      fs.close(fd, () => {})
      throw SheepError.corrupt(`object ${oidToHex(oid)} is truncated: its file has ${st.size} bytes, the index says ${info.size}`)
    }
    if (known === undefined && st.size > info.size) {
      // Bytes past the recorded end are no part of the object (a growth never synced, or a
      // shrink whose cut a power cut undid): cut them, so that a later growth reads zeros there.
      try {
        await ftruncate(fd, info.size)
      } catch (err) {
        fs.close(fd, () => {})
        throw toSheepError(err)
      }
    }
    let e = known
    if (e === undefined) {
      let sums: ObjectSums | null
      try {
        sums = await this.storedSums(oid, record?.dirty === true)
        if (sums === null) {
          sums = await this.sumsFromFile(oid, fd, info.size)
          // Kept at once, so that a restart need not take them again; a dirty record's are not read.
          await this.catalog.put([], false, [{ oid, generation: this.generation, sums: sums.encode(info.size) }])
        }
      } catch (err) {
        fs.close(fd, () => {})
        throw toSheepError(err)
      }
      e = { info, fd: -1, inflight: 0, savedVersion: info.version, savedSize: info.size, dirty: record?.dirty === true, writing: 0, marking: null, sums, savedSums: sums.changes, writeSeq: 0, stale: new Set(), changing: [] }
    }
    e.fd = fd
    this.remember(e)
    return e
  }

  /** An object's checksums from the index, or null where they cannot be trusted (see the note at the top). */
  private async storedSums (oid: ObjectId, dirty: boolean): Promise<ObjectSums | null> {
    if (dirty) return null
    const stored = await this.catalog.getSums(oid)
    if (stored === null || stored.generation < this.generation) return null
    try {
      return ObjectSums.decode(stored.sums)
    } catch {
      return null
    }
  }

  /** The checksums of what an object's file holds now. */
  private async sumsFromFile (oid: ObjectId, fd: number, size: number): Promise<ObjectSums> {
    const sums = new ObjectSums(new Uint32Array(chunksOf(size)))
    const piece = Buffer.allocUnsafe(Math.min(size, 1024 * 1024))
    for (let at = 0; at < size; at += piece.length) {
      const n = Math.min(piece.length, size - at)
      for (let done = 0; done < n;) {
        const got = await this.io.read(fd, piece, done, n - done, at + done)
        if (got === 0) throw SheepError.corrupt(`object ${oidToHex(oid)} is truncated: its file ends before byte ${at + done}`)
        done += got
      }
      sums.setFrom(at / CHUNK, piece.subarray(0, n))
    }
    this.checksums.rebuilt++
    return sums
  }

  private remember (e: Entry): void {
    this.entries.delete(e.info.oid)
    this.entries.set(e.info.oid, e)
    this.openFiles++
    if (this.openFiles > this.maxOpenFiles) this.evict(e)
  }

  /** Closes the least recently used idle descriptors, never `keep`'s, which is about to be used. */
  private evict (keep: Entry): void {
    for (const e of this.entries.values()) {
      if (this.openFiles <= this.maxOpenFiles) return
      if (e === keep || e.fd < 0 || e.inflight > 0) continue
      this.closeFd(e)
      // Saved entries cost nothing to reload; unsaved versions stay until the next sync.
      if (this.saved(e)) this.entries.delete(e.info.oid)
    }
  }

  /** Drops an object's entry once no call uses it, closing its descriptor: its file is about to go. */
  private async forget (oid: ObjectId): Promise<void> {
    const e = this.entries.get(oid)
    if (e === undefined) return
    while (e.inflight > 0) await this.waitIdle(e)
    this.closeFd(e)
    this.entries.delete(oid)
  }

  /** Whether the catalog holds the entry as it is: then it costs nothing to forget and reload. */
  private saved (e: Entry): boolean {
    return e.info.version === e.savedVersion && e.info.size === e.savedSize
  }

  private closeFd (e: Entry): void {
    if (e.fd < 0) return
    fs.close(e.fd, () => {})
    e.fd = -1
    this.openFiles--
  }
}

const ZERO_CHUNK = Buffer.alloc(CHUNK)

/** The byte ranges of data that are not whole chunks of zeros, each [start, end). */
function dataRuns (data: Uint8Array): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.length)
  let start = -1
  for (let at = 0; at < bytes.length; at += CHUNK) {
    const end = Math.min(at + CHUNK, bytes.length)
    const zero = ZERO_CHUNK.compare(bytes, at, end, 0, end - at) === 0
    if (!zero && start < 0) start = at
    if (zero && start >= 0) { runs.push([start, at]); start = -1 }
  }
  if (start >= 0) runs.push([start, bytes.length])
  return runs
}

async function exists (file: string): Promise<boolean> {
  try {
    await fs.promises.lstat(file)
    return true
  } catch {
    return false
  }
}

async function readIfExists (file: string): Promise<string | null> {
  try {
    return await fs.promises.readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
}

/** A folder removed since it gained a name (its image's objects were all deleted) needs no sync. */
async function syncDirIfThere (dir: string): Promise<void> {
  try {
    await syncDir(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
}
