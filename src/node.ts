// The composition root: builds one node from its options and starts and stops its parts in order
// (store, images, mount, control socket; the reverse on stop).

import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from './errors'
import { type CreateOptions, ImageStore } from './cow/image-store'
import { LocalObjectStore } from './objects/local-store'
import { Mount } from './fuse/mount'
import { ControlServer, type Handlers } from './control/server'
import { controlSocketPath } from './control/paths'
import type { NodeStatus } from './control/messages'
import { VERSION } from './version'

export const DEFAULT_IO_TIMEOUT_MS = 120_000

export interface NodeOptions {
  store: string
  mount: string
  /** Defaults for images made through the mount (create(2)). */
  createOptions?: CreateOptions
  ioTimeout?: number
  log?: (line: string) => void
}

export class SheepNode {
  readonly storeDir: string
  readonly mountDir: string
  private readonly opts: NodeOptions
  private readonly log: (line: string) => void
  private objects: LocalObjectStore | null = null
  private images: ImageStore | null = null
  private mount: Mount | null = null
  private control: ControlServer | null = null
  private startedAt = 0
  private stopping: Promise<void> | null = null
  /** Resolves when the node has stopped, whoever stopped it. */
  readonly stopped: Promise<void>
  private markStopped!: () => void

  constructor (opts: NodeOptions) {
    this.opts = opts
    this.storeDir = path.resolve(opts.store)
    this.mountDir = path.resolve(opts.mount)
    this.log = opts.log ?? (() => {})
    this.stopped = new Promise(resolve => { this.markStopped = resolve })
  }

  async start (): Promise<void> {
    this.startedAt = Date.now()
    const objects = new LocalObjectStore(this.storeDir)
    try {
      await objects.open()
    } catch (err) {
      if (err instanceof SheepError && err.code === 'EBUSY') {
        const pid = readPid(this.storeDir)
        throw SheepError.busy(`store ${this.storeDir} is in use by another sheep daemon${pid ? ` (pid ${pid})` : ''}`)
      }
      throw err
    }
    this.objects = objects
    try {
      fs.writeFileSync(path.join(this.storeDir, 'sheep.pid'), `${process.pid}\n`)
      const images = new ImageStore(objects, { log: this.log })
      const { collected } = await images.open()
      if (collected > 0) this.log(`collected ${collected} unreferenced objects`)
      this.images = images
      const mount = new Mount(this.mountDir)
      await mount.mount(images, {
        createOptions: this.opts.createOptions ?? {},
        ioTimeout: this.opts.ioTimeout ?? DEFAULT_IO_TIMEOUT_MS,
        log: this.log
      })
      this.mount = mount
      const control = new ControlServer(controlSocketPath(this.mountDir), this.handlers(), this.log)
      await control.listen()
      this.control = control
    } catch (err) {
      await this.teardown()
      throw err
    }
    this.log(`sheep ${VERSION} serving ${this.mountDir} from store ${this.storeDir} (pid ${process.pid})`)
  }

  /** Stops the node. Refuses (EBUSY) while images are open, unless forced. */
  async stop (force = false): Promise<void> {
    if (this.stopping) return await this.stopping
    const open = this.images?.list().filter(i => i.openCount > 0) ?? []
    if (open.length > 0 && !force) {
      throw SheepError.busy(`images are open: ${open.map(i => i.name).join(', ')}; close them first or stop with --force`)
    }
    this.stopping = this.teardown(() => this.log('stopped'))
    return await this.stopping
  }

  private async teardown (onDone?: () => void): Promise<void> {
    try {
      await this.control?.close()
      this.control = null
      await this.mount?.unmount()
      this.mount = null
      await this.images?.close()
      this.images = null
      if (this.objects) fs.rmSync(path.join(this.storeDir, 'sheep.pid'), { force: true })
      await this.objects?.close()
      this.objects = null
      onDone?.()
    } finally {
      this.markStopped()
    }
  }

  async status (): Promise<NodeStatus> {
    const images = this.imageStore()
    const objects = this.objects as LocalObjectStore
    const list = images.list()
    const usage = await objects.usage()
    const stored = await objects.allocatedBytes()
    return {
      version: VERSION,
      pid: process.pid,
      store: this.storeDir,
      mount: this.mountDir,
      startedAt: this.startedAt,
      images: list.length,
      openHandles: list.reduce((n, i) => n + i.openCount, 0),
      provisioned: list.reduce((n, i) => n + i.size, 0),
      allocated: list.reduce((n, i) => n + i.allocatedBytes, 0),
      capacity: usage.capacity,
      free: usage.free,
      objects: stored.objects,
      storeBytes: stored.bytes,
      problems: images.problems()
    }
  }

  private imageStore (): ImageStore {
    if (this.images === null || this.stopping) throw SheepError.closing()
    return this.images
  }

  private handlers (): Handlers {
    return {
      status: async () => await this.status(),
      'image.list': async () => this.imageStore().list().map(i => this.imageStore().info(i)),
      'image.create': async ({ name, size, objectSize, copies }) => {
        const images = this.imageStore()
        return images.info(await images.create(name, size, { ...this.opts.createOptions, objectSize: objectSize ?? this.opts.createOptions?.objectSize, copies: copies ?? this.opts.createOptions?.copies }))
      },
      'image.delete': async ({ name }, progress) => { await this.imageStore().remove(name, progress); return null },
      'image.resize': async ({ name, size }) => {
        const images = this.imageStore()
        await images.resize(name, size)
        return images.info(images.get(name))
      },
      'image.rename': async ({ from, to }) => {
        const images = this.imageStore()
        await images.rename(from, to)
        return images.info(images.get(to))
      },
      'image.clone': async ({ source, tag, name }) => {
        const images = this.imageStore()
        return images.info(tag === undefined ? await images.cloneCurrent(source, name) : await images.clone(source, tag, name))
      },
      'image.flatten': async ({ name }, progress) => {
        const images = this.imageStore()
        await images.flatten(name, progress)
        return images.info(images.get(name))
      },
      'image.tree': async () => this.imageStore().tree(),
      'snapshot.create': async ({ name, tag }) => {
        const images = this.imageStore()
        return images.snapshotInfo(await images.snapshot(name, tag))
      },
      'snapshot.list': async ({ name }) => {
        const images = this.imageStore()
        images.get(name)
        return images.snapshotsOf(name).map(s => images.snapshotInfo(s))
      },
      'snapshot.delete': async ({ name, tag }) => { await this.imageStore().deleteSnapshot(name, tag); return null },
      'snapshot.rollback': async ({ name, tag }) => {
        const images = this.imageStore()
        await images.rollback(name, tag)
        return images.info(images.get(name))
      },
      stop: async ({ force }) => {
        // Answer first, then stop: the stop closes this very socket.
        const open = this.imageStore().list().filter(i => i.openCount > 0)
        if (open.length > 0 && force !== true) {
          throw SheepError.busy(`images are open: ${open.map(i => i.name).join(', ')}; close them first or stop with --force`)
        }
        setImmediate(() => { this.stop(true).catch(err => this.log(`stop failed: ${(err as Error).message}`)) })
        return null
      }
    }
  }
}

/** Throws EINVAL unless `dir` is a store or may become one. */
export async function checkStoreFolder (dir: string): Promise<void> {
  await LocalObjectStore.check(dir)
}

function readPid (storeDir: string): number | null {
  try {
    const pid = Number(fs.readFileSync(path.join(storeDir, 'sheep.pid'), 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}
