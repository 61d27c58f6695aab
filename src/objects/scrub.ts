// The background scrub: every object of this node's store read whole, in id order, and checked
// against its checksums, at a bounded rate so that guests keep the disk. A pass starts `interval`
// after the last one ended (kept in the store's folder across restarts). What it finds damaged
// goes to `damaged` (on a cluster: recovery marks the copy missed and heals it from a replica).
// Objects are listed in id order, so each image's data objects are walked together (and its
// inode later, with the other inodes): when the walk leaves an image's objects, the time and what
// the pass found in them so far are kept as that image's last full check.

import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from '../errors'
import { type ObjectId, ObjectType, oidType, oidVid } from './oid'
import type { LocalObjectStore } from './local-store'
import type { ObjectInfo } from './types'

const STATE_FILE = 'scrub.json'
const LIST_PAGE = 1000

export interface ScrubOptions {
  /** Bytes read per second at most; 0: no scrub. */
  rate: number
  /** Seconds between the end of a pass and the start of the next. */
  interval: number
  /** A copy found damaged (EIO from its read). */
  damaged: (oid: ObjectId, err: SheepError) => Promise<void>
  log: (line: string) => void
}

export interface ImageScrub {
  /** When a pass last walked all of the image's objects here (ms since the epoch). */
  checkedAt: number
  /** Damaged copies that pass found. */
  found: number
}

export interface ScrubStatus {
  rate: number
  /** Objects checked in this pass so far (or the last one, between passes). */
  checked: number
  /** Bytes read in this pass so far. */
  bytes: number
  running: boolean
  /** When the last whole pass ended, and what it found in all. */
  lastPassAt: number | null
  lastPassFound: number
  /** By vid: the last full check of each image's objects on this node. */
  images: Map<number, ImageScrub>
}

export class Scrubber {
  private readonly store: Pick<LocalObjectStore, 'list' | 'verify' | 'dir'>
  private readonly opts: ScrubOptions
  private timer: NodeJS.Timeout | null = null
  private stopped = false
  private wake: (() => void) | null = null
  private readonly state: ScrubStatus

  constructor (store: Pick<LocalObjectStore, 'list' | 'verify' | 'dir'>, opts: ScrubOptions) {
    this.store = store
    this.opts = opts
    this.state = { rate: opts.rate, checked: 0, bytes: 0, running: false, lastPassAt: null, lastPassFound: 0, images: new Map() }
    try {
      const saved = JSON.parse(fs.readFileSync(path.join(store.dir, STATE_FILE), 'utf8')) as { lastPassAt?: unknown, lastPassFound?: unknown }
      if (typeof saved.lastPassAt === 'number') this.state.lastPassAt = saved.lastPassAt
      if (typeof saved.lastPassFound === 'number') this.state.lastPassFound = saved.lastPassFound
    } catch {}
  }

  get status (): ScrubStatus {
    return { ...this.state, images: new Map(this.state.images) }
  }

  start (): void {
    if (this.opts.rate <= 0) return
    const due = this.state.lastPassAt === null ? 0 : Math.max(0, this.state.lastPassAt + this.opts.interval * 1000 - Date.now())
    this.schedule(due)
  }

  stop (): void {
    this.stopped = true
    if (this.timer !== null) clearTimeout(this.timer)
    this.wake?.()
  }

  private schedule (ms: number): void {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      this.timer = null
      this.pass().catch(err => this.opts.log(`scrub: ${(err as Error).message}`)).finally(() => this.schedule(this.opts.interval * 1000))
    }, ms)
    this.timer.unref()
  }

  private async pass (): Promise<void> {
    const s = this.state
    s.running = true
    s.checked = 0
    s.bytes = 0
    const started = Date.now()
    let found = 0
    let vid: number | null = null
    // Ids order by type first: an image's inode comes after every image's data objects.
    const foundIn = new Map<number, number>()
    const leave = (): void => { if (vid !== null) s.images.set(vid, { checkedAt: Date.now(), found: foundIn.get(vid) ?? 0 }) }
    try {
      for await (const info of this.listed()) {
        if (this.stopped) return
        if (info.removed === true || info.missed === true) continue
        const owner = oidType(info.oid) === ObjectType.Data || oidType(info.oid) === ObjectType.Inode ? oidVid(info.oid) : null
        if (owner !== vid) {
          leave()
          vid = owner
        }
        try {
          await this.store.verify(info.oid)
        } catch (err) {
          if (err instanceof SheepError && err.code === 'EIO') {
            found++
            if (owner !== null) foundIn.set(owner, (foundIn.get(owner) ?? 0) + 1)
            await this.opts.damaged(info.oid, err)
          } else if (!(err instanceof SheepError && err.code === 'ENOENT')) {
            throw err
          }
        }
        s.checked++
        s.bytes += info.size
        // Behind the rate: wait until the bytes read so far are what it allows.
        const ahead = s.bytes / this.opts.rate * 1000 - (Date.now() - started)
        if (ahead > 0) await this.sleep(ahead)
      }
      leave()
      const ended = Date.now()
      await fs.promises.writeFile(path.join(this.store.dir, STATE_FILE), JSON.stringify({ lastPassAt: ended, lastPassFound: found }) + '\n')
      s.lastPassAt = ended
      s.lastPassFound = found
      this.opts.log(`scrub: checked ${s.checked} objects (${s.bytes} bytes) in ${Math.round((ended - started) / 1000)} s; ${found === 0 ? 'all whole' : `${found} damaged`}`)
    } finally {
      s.running = false
    }
  }

  /**
   * The store's objects in id order, a page at a time: a pass takes hours, and an index iterator
   * held open that long would pin its snapshot of the index.
   */
  private async * listed (): AsyncIterable<ObjectInfo> {
    for (let from: ObjectId | undefined; ;) {
      const page: ObjectInfo[] = []
      for await (const info of this.store.list(from)) {
        page.push(info)
        if (page.length === LIST_PAGE) break
      }
      yield * page
      const last = page[page.length - 1]
      if (page.length < LIST_PAGE || last === undefined) return
      from = last.oid + 1n
    }
  }

  private async sleep (ms: number): Promise<void> {
    await new Promise<void>(resolve => {
      const t = setTimeout(() => { this.wake = null; resolve() }, ms)
      this.wake = () => { clearTimeout(t); this.wake = null; resolve() }
    })
  }
}
