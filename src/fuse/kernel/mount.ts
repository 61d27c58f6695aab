// Mounting with the kernel protocol, as root: open /dev/fuse, let util-linux mount(8) mount it
// (the descriptor passed as the child's fd 3), read requests in worker threads, serve them in
// the session; unmount with umount(8) started asynchronously (notes/fuse-kernel.md: a
// synchronous one deadlocks, as umount stats the mount point and the daemon must answer).

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import { SheepError } from '../../errors'
import { FUSE_FSNAME, type FsCore } from '../adapter'
import { FUSE_KERNEL_MINOR, FUSE_KERNEL_VERSION, MAX_WRITE, REQUEST_BUFFER } from './protocol'
import { KernelSession, type KernelStats, type SessionOptions } from './session'
import { SLOT_KEY, SLOT_SIZE, SLOTS, type WorkerData, type WorkerMessage } from './worker'

/** Threads blocked in read(2) on /dev/fuse. Each hands a request over at once, so few are needed. */
const READERS = 2
/** How long a mount waits for the kernel's INIT (it is queued by mount(2) itself). */
const INIT_WAIT_MS = 10_000

/**
 * The mount options libfuse 2 is given today (src/fuse/libfuse2.ts), in the kernel's terms:
 * other users may open images, the kernel checks permissions from the attributes, and a read
 * may be as large as a write.
 */
function mountOptions (fd: number): string {
  return [`fd=${fd}`, 'rootmode=40000', 'user_id=0', 'group_id=0', 'allow_other', 'default_permissions', `max_read=${MAX_WRITE}`].join(',')
}

/** Why this process cannot mount with the kernel protocol, or null if it may try. */
export function kernelUnavailable (): string | null {
  if (process.getuid?.() !== 0) return 'not root (mounting /dev/fuse directly needs CAP_SYS_ADMIN)'
  if (!fs.existsSync('/dev/fuse')) return '/dev/fuse does not exist'
  return null
}

/** Runs a command without waiting on this thread; resolves with its status and what it said. */
async function run (cmd: string, args: string[], fd?: number): Promise<{ code: number | null, said: string }> {
  const child = spawn(cmd, args, { stdio: fd === undefined ? ['ignore', 'ignore', 'pipe'] : ['ignore', 'ignore', 'pipe', fd] })
  let said = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (d: string) => { said += d })
  return await new Promise(resolve => {
    child.on('error', err => resolve({ code: null, said: err.message }))
    child.on('close', code => resolve({ code, said: said.trim() }))
  })
}

export class KernelMount {
  private readonly ended: Promise<void>
  private readonly readers: Worker[] = []

  private constructor (readonly dir: string, private readonly fd: number, private readonly session: KernelSession, log: (line: string) => void) {
    const served = session.served
    let running = READERS
    let markEnded!: () => void
    this.ended = new Promise(resolve => { markEnded = resolve })
    for (let i = 0; i < READERS; i++) {
      const slots = new SharedArrayBuffer(SLOTS * SLOT_SIZE)
      const busy = new SharedArrayBuffer(SLOTS * 4)
      const taken = new Int32Array(busy)
      const views = Array.from({ length: SLOTS }, (_, slot) => Buffer.from(slots, slot * SLOT_SIZE, SLOT_SIZE))
      const worker = new Worker(path.join(__dirname, 'worker.js'), { workerData: { fd, served, slots, busy } satisfies WorkerData })
      worker.on('message', (m: WorkerMessage) => {
        if (typeof m === 'number') {
          const slot = Math.floor(m / SLOT_KEY)
          session.handle((views[slot] as Buffer).subarray(0, m % SLOT_KEY), () => Atomics.store(taken, slot, 0))
        } else if (m.type === 'request') {
          // A large request's buffer goes back to its reader once done with, to take another.
          session.handle(Buffer.from(m.buf, 0, m.length), m.buf.byteLength === REQUEST_BUFFER ? () => worker.postMessage(m.buf, [m.buf]) : undefined)
        } else if (m.error !== null) {
          log(`fuse: reading /dev/fuse failed: ${m.error}`)
        }
      })
      const gone = (): void => { if (--running === 0) markEnded() }
      worker.on('exit', gone)
      worker.on('error', err => log(`fuse: a reader thread failed: ${err.stack ?? err.message}`))
      // A reader blocked in read(2) must not keep the process alive while it serves.
      worker.unref()
      this.readers.push(worker)
    }
  }

  /** Mounts `dir` and starts serving it through `core`. */
  static async mount (dir: string, core: FsCore, opts: SessionOptions): Promise<KernelMount> {
    const fd = fs.openSync('/dev/fuse', 'r+')
    let mounted = false
    let m: KernelMount
    try {
      fs.mkdirSync(dir, { recursive: true })
      // -i: no mount helper (there is none for fuse.sheep); the type names the filesystem in
      // /proc/self/mountinfo, which is how the sheep command finds a mount.
      const r = await run('mount', ['-i', '-t', `fuse.${FUSE_FSNAME}`, '-o', mountOptions(3), FUSE_FSNAME, dir], fd)
      if (r.code !== 0) {
        if (/busy|already mounted/i.test(r.said)) throw SheepError.busy(`mount point ${dir} is busy: ${r.said}`)
        throw new SheepError('EIO', `cannot mount ${dir}: ${r.said || `mount exited with ${r.code}`}`)
      }
      mounted = true
      const send = (reply: Buffer): void => {
        try { fs.writeSync(fd, reply) } catch {} // ENOENT: the request was interrupted; ENODEV: unmounted
      }
      m = new KernelMount(dir, fd, new KernelSession(core, send, opts), opts.log)
    } catch (err) {
      if (mounted) await run('umount', ['-l', dir])
      fs.closeSync(fd)
      throw err
    }
    // Mounted means answering: the start reports ready after this, and `sheep status` counts it.
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new SheepError('EIO', `the kernel sent no FUSE INIT within ${INIT_WAIT_MS} ms`)), INIT_WAIT_MS) })
    try {
      await Promise.race([m.session.initialized, timeout])
    } catch (err) {
      await m.unmount()
      throw err
    } finally {
      clearTimeout(timer)
    }
    opts.log(`fuse: kernel protocol ${FUSE_KERNEL_VERSION}.${FUSE_KERNEL_MINOR} on /dev/fuse, requests up to ${MAX_WRITE >> 10} KiB`)
    return m
  }

  stats (): KernelStats {
    return this.session.stats()
  }

  /**
   * Unmounts; resolves once the readers have seen the connection end (ENODEV). A plain umount
   * ends it. One refused because files are open (`sheep stop --force`) becomes a forced one,
   * which aborts the connection (their I/O then fails with ENOTCONN, as after libfuse 2's lazy
   * unmount and exit), then a lazy one for the mount point itself. Lazy alone would not do: a
   * file closed after it sends a RELEASE that keeps the filesystem alive until answered, and
   * Node's exit waits for readers blocked in read(2): the process would never end.
   */
  async unmount (): Promise<void> {
    // Until the readers have ended, they are what the process waits for: nothing else may be
    // left to keep it alive, and the teardown after the unmount must still run.
    for (const r of this.readers) r.ref()
    const plain = await run('umount', [this.dir])
    if (plain.code !== 0) {
      const forced = await run('umount', ['-f', this.dir])
      if (forced.code !== 0) {
        const lazy = await run('umount', ['-l', this.dir])
        if (lazy.code !== 0) throw new SheepError('EBUSY', `cannot unmount ${this.dir}: ${lazy.said || forced.said || plain.said}`)
      }
    }
    await this.ended
    this.session.close()
    // Only now: a descriptor closed under a blocked reader could be reused by the next open.
    fs.closeSync(this.fd)
  }
}
