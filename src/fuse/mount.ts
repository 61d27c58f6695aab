// Mounting: checks that FUSE is usable, builds the libfuse option string, mounts and unmounts.

import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from '../errors'
import type { ImageStore } from '../cow/image-store'
import { type AdapterOptions, fuseOperations } from './adapter'

type FuseClass = typeof import('fuse-native')

export const FUSE_FSNAME = 'sheep'
/** libfuse 2 caps requests at 128 KiB. */
const MAX_REQUEST = 131072

export interface MountOptions extends AdapterOptions {
  /** Milliseconds after which fuse-native answers an operation with ETIMEDOUT. */
  ioTimeout: number
}

export function fuseMissing (): string | null {
  if (!fs.existsSync('/dev/fuse')) return 'FUSE is missing: /dev/fuse does not exist (load the fuse module, or give the container /dev/fuse)'
  try {
    execFileSync('fusermount', ['-V'], { stdio: 'ignore' })
  } catch {
    return 'FUSE is missing: fusermount is not installed (Debian: apt-get install fuse libfuse2)'
  }
  try {
    require('fuse-native')
  } catch (err) {
    return `FUSE is missing: cannot load libfuse 2 (Debian: apt-get install libfuse2): ${(err as Error).message.split('\n')[0]}`
  }
  return null
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
  private fuse: InstanceType<FuseClass> | null = null

  constructor (dir: string) {
    this.dir = path.resolve(dir)
  }

  async mount (images: ImageStore, opts: MountOptions): Promise<void> {
    const missing = fuseMissing()
    if (missing) throw new SheepError('ENOTSUP', missing)
    if (isStaleMount(this.dir)) lazyUnmount(this.dir)
    else if (isMountPoint(this.dir)) throw SheepError.busy(`mount point ${this.dir} is busy: something is mounted there`)
    const Fuse = require('fuse-native') as FuseClass
    // fuse-native whitelists only some -o options; its option string goes to libfuse verbatim.
    // attr_timeout/entry_timeout=0: no attribute or name caching, so a resize, rename or delete
    // through the command shows at once (fuse-native's attrTimeout option drops 0).
    // direct_io: no page cache in front of the images. Every read sees the store as it is (as
    // other hosts will write it), and writes skip the kernel's page-cache path, which asks the
    // daemon for security.capability before every write once getxattr is implemented (FUSE
    // never marks its inodes S_NOSEC): measured, 4K writes and fsync got 1.3-2x faster.
    const extra = ['big_writes', `max_write=${MAX_REQUEST}`, 'allow_other', 'default_permissions', 'attr_timeout=0', 'entry_timeout=0', 'direct_io']
    class SheepFuse extends Fuse {
      protected override _fuseOptions (): string {
        return super._fuseOptions() + ',' + extra.join(',')
      }
    }
    const fuse = new SheepFuse(this.dir, fuseOperations(images, opts), {
      mkdir: true,
      maxRead: MAX_REQUEST,
      fsname: FUSE_FSNAME,
      subtype: FUSE_FSNAME,
      timeout: opts.ioTimeout
    })
    await new Promise<void>((resolve, reject) => fuse.mount(err => {
      if (err === null || err === undefined) return resolve()
      if (/in use/i.test(err.message)) return reject(SheepError.busy(`mount point ${this.dir} is busy: ${err.message}`))
      reject(new SheepError('EIO', `cannot mount ${this.dir}: ${err.message}`))
    }))
    this.fuse = fuse
  }

  async unmount (): Promise<void> {
    const fuse = this.fuse
    if (fuse === null) return
    this.fuse = null
    await new Promise<void>((resolve, reject) => fuse.unmount(err => err ? reject(new SheepError('EBUSY', `cannot unmount ${this.dir}: ${err.message}`)) : resolve()))
  }
}
