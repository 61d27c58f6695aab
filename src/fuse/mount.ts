// Mounting: picks the session (the kernel protocol, else fuse-native's libfuse 2), clears a
// stale mount a killed daemon left, mounts and unmounts, and reports which session runs.

import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from '../errors'
import type { ImageStore } from '../cow/image-store'
import { type AdapterOptions, adapterCore } from './adapter'
import { KernelMount, kernelUnavailable } from './kernel/mount'
import type { KernelStats } from './kernel/session'
import { Libfuse2Mount } from './libfuse2'

/** kernel: the FUSE protocol spoken on /dev/fuse by the daemon (root); libfuse2: fuse-native. */
export type Frontend = 'kernel' | 'libfuse2'
export const FRONTENDS: readonly Frontend[] = ['kernel', 'libfuse2']

export interface MountOptions extends AdapterOptions {
  /** Milliseconds after which an operation is answered ETIMEDOUT. */
  ioTimeout: number
  /** Which session to run; 'auto': the kernel protocol where it works, else libfuse 2. */
  frontend: Frontend | 'auto'
}

/** What `sheep status` shows of the mount: the session, and for the kernel one its requests. */
export interface FuseStatus extends Partial<KernelStats> {
  frontend: Frontend
}

/** Whether `dir` is a mount point whose FUSE daemon is gone (stat fails with ENOTCONN). */
export function isStaleMount (dir: string): boolean {
  try {
    fs.statSync(dir)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOTCONN'
  }
}

/** Whether something is mounted at `dir` (per /proc/self/mountinfo). */
export function isMountPoint (dir: string): boolean {
  const target = path.resolve(dir)
  const info = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  return info.split('\n').some(line => unescapeMountPath(line.split(' ')[4] ?? '') === target)
}

function unescapeMountPath (p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

export function lazyUnmount (dir: string): void {
  execFileSync('fusermount', ['-uz', dir], { stdio: 'ignore' })
}

export class Mount {
  readonly dir: string
  private session: KernelMount | Libfuse2Mount | null = null

  constructor (dir: string) {
    this.dir = path.resolve(dir)
  }

  get frontend (): Frontend | null {
    return this.session === null ? null : this.session instanceof KernelMount ? 'kernel' : 'libfuse2'
  }

  async mount (images: ImageStore, opts: MountOptions): Promise<void> {
    // A dead mount answers ENOTCONN; stat only what mountinfo lists, as stat-ing a dead mount can block.
    if (isMountPoint(this.dir)) {
      if (isStaleMount(this.dir)) lazyUnmount(this.dir)
      else throw SheepError.busy(`mount point ${this.dir} is busy: something is mounted there`)
    }
    const core = adapterCore(images, opts)
    if (opts.frontend !== 'libfuse2') {
      const why = kernelUnavailable()
      if (why !== null && opts.frontend === 'kernel') throw new SheepError('ENOTSUP', `cannot speak the FUSE kernel protocol: ${why}`)
      if (why === null) {
        try {
          this.session = await KernelMount.mount(this.dir, core, opts)
          return
        } catch (err) {
          if (opts.frontend === 'kernel' || (err instanceof SheepError && err.code === 'EBUSY')) throw err
          opts.log(`fuse: the kernel protocol failed (${(err as Error).message}); falling back to libfuse 2`)
        }
      } else {
        opts.log(`fuse: the kernel protocol is not available (${why}); falling back to libfuse 2`)
      }
    }
    this.session = await Libfuse2Mount.mount(this.dir, core, opts)
  }

  status (): FuseStatus | null {
    const s = this.session
    if (s === null) return null
    return s instanceof KernelMount ? { frontend: 'kernel', ...s.stats() } : { frontend: 'libfuse2' }
  }

  async unmount (): Promise<void> {
    const s = this.session
    if (s === null) return
    this.session = null
    await s.unmount()
  }
}
