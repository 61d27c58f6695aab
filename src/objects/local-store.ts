// One node's object store: each object is a file under objects/<vid>/, written in place with
// pread/pwrite, plus a classic-level catalog of (id, version, size).
//
// Crash rules: the catalog record is written before an object file is created and removed after
// it is unlinked, so every object file has a record. A record whose file is missing or shorter
// than its size is a corrupt object: reads of it fail with EIO, never return other bytes.
// Whole-object replacement goes through a temporary file and rename, so it is atomic.

import fs from 'node:fs'
import path from 'node:path'
import { SheepError, toSheepError } from '../errors'
import { Catalog } from './catalog'
import { fdatasync, FileIo, type FileIoOptions, ftruncate, openFile, syncPath } from './file-io'
import { type ObjectId, ObjectType, oidToHex, oidType, oidVid } from './oid'
import type { ObjectInfo, ObjectStore, StoreUsage } from './types'

const FORMAT_FILE = 'FORMAT'
const FORMAT_LINE = 'sheep-store 1\n'
export const DEFAULT_MAX_OPEN_FILES = 512

export interface LocalStoreOptions {
  /** How many object files stay open between I/Os. */
  maxOpenFiles?: number
  /** When reads and writes run on the event loop's thread (./file-io.ts). */
  io?: FileIoOptions
}

interface Entry {
  info: ObjectInfo
  fd: number // -1 when closed
  inflight: number
  /** Version last written to the catalog. */
  savedVersion: number
}

export class LocalObjectStore implements ObjectStore {
  readonly dir: string
  // Built in open(): classic-level creates its directory when constructed.
  private catalog!: Catalog
  private readonly entries = new Map<ObjectId, Entry>() // insertion order = least recently used first
  private readonly loading = new Map<ObjectId, Promise<Entry>>()
  /** Replaces in progress (the last one of each object): a load waits for them. */
  private readonly replacing = new Map<ObjectId, Promise<void>>()
  private readonly maxOpenFiles: number
  private readonly io: FileIo
  private openFiles = 0
  private closed = false
  private casTail: Promise<void> = Promise.resolve()
  /** Object folders known to exist, so creating an object costs no mkdir. */
  private readonly dirs = new Set<string>()
  /** Objects were created since the catalog was last synced to disk. */
  private createdSinceSync = false

  constructor (dir: string, opts: LocalStoreOptions = {}) {
    this.dir = path.resolve(dir)
    this.maxOpenFiles = opts.maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES
    this.io = new FileIo(opts.io)
  }

  /** Opens (or initialises) the store. EBUSY when another daemon holds it. */
  async open (): Promise<void> {
    await fs.promises.mkdir(this.dir, { recursive: true })
    if (!await LocalObjectStore.check(this.dir)) await fs.promises.writeFile(path.join(this.dir, FORMAT_FILE), FORMAT_LINE)
    await fs.promises.mkdir(path.join(this.dir, 'objects'), { recursive: true })
    this.catalog = new Catalog(path.join(this.dir, 'index'))
    await this.catalog.open()
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
    this.closed = true
    await this.persistVersions([...this.entries.values()], true)
    for (const e of this.entries.values()) this.closeFd(e)
    this.entries.clear()
    await this.catalog.close()
  }

  private objectPath (oid: ObjectId): string {
    return path.join(this.dir, 'objects', oidVid(oid).toString(16).padStart(6, '0'), oidToHex(oid))
  }

  async create (oid: ObjectId, size: number): Promise<void> {
    this.checkOpen()
    if (this.entries.has(oid) || await this.catalog.get(oid)) throw SheepError.exists(`object ${oidToHex(oid)}`)
    const info: ObjectInfo = { oid, version: 1, size }
    await this.catalog.put([info])
    this.createdSinceSync = true
    const file = this.objectPath(oid)
    await this.ensureDir(path.dirname(file))
    let fd: number
    try {
      fd = await openFile(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC)
      await ftruncate(fd, size)
    } catch (err) {
      throw toSheepError(err)
    }
    this.remember({ info, fd, inflight: 0, savedVersion: 1 })
  }

  async read (oid: ObjectId, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
    const e = await this.acquire(oid)
    try {
      await this.readEntry(e, offset, length, target, targetOffset)
    } finally {
      this.release(e)
    }
  }

  private async readEntry (e: Entry, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
    const oid = e.info.oid
    try {
      if (offset + length > e.info.size) throw SheepError.invalid(`read past the end of object ${oidToHex(oid)}`)
      let done = 0
      while (done < length) {
        const n = await this.io.read(e.fd, target, targetOffset + done, length - done, offset + done)
        if (n === 0) throw SheepError.corrupt(`object ${oidToHex(oid)} is truncated: its file ends before byte ${offset + done}`)
        done += n
      }
    } catch (err) {
      throw toSheepError(err)
    }
  }

  async write (oid: ObjectId, offset: number, data: Uint8Array): Promise<void> {
    const e = await this.acquire(oid)
    try {
      let done = 0
      while (done < data.length) {
        done += await this.io.write(e.fd, data, done, data.length - done, offset + done)
      }
      e.info.version++
      if (offset + data.length > e.info.size) {
        e.info.size = offset + data.length
        await this.catalog.put([e.info])
        e.savedVersion = e.info.version
      }
    } catch (err) {
      throw toSheepError(err)
    } finally {
      this.release(e)
    }
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
    const before = [this.replacing.get(oid), this.loading.get(oid)]
    const run = (async () => {
      for (const p of before) await p?.catch(() => {})
      await this.swapIn(oid, data, version)
    })()
    const tail = run.catch(() => {})
    this.replacing.set(oid, tail)
    try {
      await run
    } finally {
      if (this.replacing.get(oid) === tail) this.replacing.delete(oid)
    }
  }

  private async swapIn (oid: ObjectId, data: Uint8Array, version?: number): Promise<void> {
    const file = this.objectPath(oid)
    const tmp = file + '.tmp'
    const old = this.entries.get(oid)?.info ?? await this.catalog.get(oid)
    const info: ObjectInfo = { oid, version: version ?? (old?.version ?? 0) + 1, size: data.length }
    await this.ensureDir(path.dirname(file))
    try {
      const fd = await openFile(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC)
      try {
        let done = 0
        while (done < data.length) done += await this.io.write(fd, data, done, data.length - done, done)
        await fdatasync(fd)
      } finally {
        fs.closeSync(fd)
      }
      // The record's size never exceeds the file's, whichever step a crash interrupts: shrink the
      // record to fit both files, swap the files, then record the new object.
      const fits = Math.min(old?.size ?? 0, data.length)
      if (old === null || fits < old.size) await this.catalog.put([{ oid, version: old?.version ?? 0, size: fits }], true)
      await fs.promises.rename(tmp, file)
      await this.catalog.put([info], true)
    } catch (err) {
      throw toSheepError(err)
    }
    const e = this.entries.get(oid)
    if (e) {
      // The old fd points at the replaced file; reopen on next use.
      await this.waitIdle(e)
      this.closeFd(e)
      e.info = info
      e.savedVersion = info.version
    }
  }

  async compareAndReplace (oid: ObjectId, data: Uint8Array, expected: number): Promise<number> {
    // One compare-and-replace at a time, so no other can slip between the check and the replace.
    const run = this.casTail.then(async () => {
      const current = (await this.stat(oid))?.version ?? 0
      if (current !== expected) throw SheepError.conflict(`object ${oidToHex(oid)} is at version ${current}, not ${expected}`)
      await this.replace(oid, data)
      return current + 1
    })
    this.casTail = run.then(() => {}, () => {})
    return await run
  }

  async truncate (oid: ObjectId, size: number): Promise<void> {
    const e = await this.acquire(oid)
    try {
      const old = e.info.size
      if (size === old) return
      // The record never claims more than the file holds: grow the file first, shrink it last.
      if (size > old) await ftruncate(e.fd, size)
      e.info.size = size
      e.info.version++
      await this.catalog.put([e.info])
      e.savedVersion = e.info.version
      if (size < old) await ftruncate(e.fd, size)
    } catch (err) {
      throw toSheepError(err)
    } finally {
      this.release(e)
    }
  }

  async remove (oid: ObjectId): Promise<void> {
    this.checkOpen()
    const e = this.entries.get(oid)
    if (e) {
      await this.waitIdle(e)
      this.closeFd(e)
      this.entries.delete(oid)
    }
    const file = this.objectPath(oid)
    await fs.promises.rm(file, { force: true })
    await this.catalog.del(oid)
    // An image's folder goes with its inode, or with its token record, the last objects of it to be deleted.
    if (oidType(oid) === ObjectType.Inode || oidType(oid) === ObjectType.Token) {
      this.dirs.delete(path.dirname(file))
      await fs.promises.rmdir(path.dirname(file)).catch(() => {})
    }
  }

  async stat (oid: ObjectId): Promise<ObjectInfo | null> {
    this.checkOpen()
    const e = this.entries.get(oid)
    if (e) return { ...e.info }
    return await this.catalog.get(oid)
  }

  async * list (from?: ObjectId): AsyncIterable<ObjectInfo> {
    this.checkOpen()
    for await (const info of this.catalog.list(from)) {
      const e = this.entries.get(info.oid)
      yield e ? { ...e.info } : info
    }
  }

  async sync (oids: Iterable<ObjectId>): Promise<void> {
    this.checkOpen()
    const synced: Entry[] = []
    const work: Promise<void>[] = []
    for (const oid of oids) {
      const e = this.entries.get(oid)
      if (e && e.fd >= 0) {
        synced.push(e)
        e.inflight++
        work.push(fdatasync(e.fd).finally(() => this.release(e)))
      } else {
        // Closed since it was written: fsync through a new descriptor of the same file.
        work.push(syncPath(this.objectPath(oid)))
        if (e) synced.push(e)
      }
    }
    try {
      await Promise.all(work)
    } catch (err) {
      throw toSheepError(err)
    }
    // New objects' records must be durable before anything that refers to them is; one synced
    // catalog write flushes every record written before it.
    const syncCatalog = this.createdSinceSync
    this.createdSinceSync = false
    await this.persistVersions(synced, syncCatalog)
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
      objects++
      try {
        bytes += (await fs.promises.stat(this.objectPath(info.oid))).blocks * 512
      } catch {}
    }
    return { objects, bytes }
  }

  private async persistVersions (entries: Entry[], sync: boolean): Promise<void> {
    const changed = entries.filter(e => e.info.version !== e.savedVersion)
    if (changed.length === 0 && sync && entries[0]) changed.push(entries[0])
    if (changed.length === 0) return
    const infos = changed.map(e => ({ ...e.info }))
    await this.catalog.put(infos, sync)
    for (let i = 0; i < changed.length; i++) {
      const e = changed[i] as Entry
      e.savedVersion = (infos[i] as ObjectInfo).version
      if (e.fd < 0 && e.inflight === 0 && e.savedVersion === e.info.version) this.entries.delete(e.info.oid)
    }
  }

  private async ensureDir (dir: string): Promise<void> {
    if (this.dirs.has(dir)) return
    await fs.promises.mkdir(dir, { recursive: true })
    this.dirs.add(dir)
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
    const info = known?.info ?? await this.catalog.get(oid)
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
    const e = known ?? { info, fd: -1, inflight: 0, savedVersion: info.version }
    e.fd = fd
    this.remember(e)
    return e
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
      if (e.info.version === e.savedVersion) this.entries.delete(e.info.oid)
    }
  }

  private closeFd (e: Entry): void {
    if (e.fd < 0) return
    fs.close(e.fd, () => {})
    e.fd = -1
    this.openFiles--
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
