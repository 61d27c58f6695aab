// The physical limit columns: the bare file in a plain folder on the same disk as everything else
// (ext4 on this VM), no FUSE and no daemon. Measured in the same run as the FUSE targets, once with
// the same fio options as they get (O_DIRECT) and once buffered, so that each row shows how far
// the FUSE targets are from what the disk and the kernel give without them.
//
// Buffered: fio's options get --direct=0 appended (fio takes the last value given). Every job also
// gets --invalidate=1, fio's default made explicit: before a job starts, fio drops the page cache
// of the test file (posix_fadvise DONTNEED), so a read job starts cold, with the file on the disk,
// and warms the cache as it goes. Dropping all caches (/proc/sys/vm/drop_caches) would also empty
// the other targets' caches and the other engineers' on this shared machine. The write +
// fdatasync row has no --direct option anywhere (its writes are buffered in every column), so both
// ext4 columns run that job identically.
//
// qemu-img convert writes onto the folder like onto a mount; in the O_DIRECT column with `-t none`
// (O_DIRECT on the output), in the buffered one with qemu-img's default (`-t unsafe`, as on the mounts).

import fs from 'node:fs'
import path from 'node:path'
import type { Goals } from './rows'
import type { Target } from './targets'

export class PlainFileTarget implements Target {
  readonly kind = 'plain'
  readonly name: string
  readonly goals: Goals = {}
  readonly copies = 1
  readonly mount: string
  readonly description: string
  readonly fioOptions: string[]
  readonly qemuImgOptions: string[]

  /** dir: an empty folder of its own, on the disk under test. */
  constructor (dir: string, direct: boolean) {
    this.mount = dir
    this.name = direct ? 'ext4 direct' : 'ext4 buffered'
    this.fioOptions = direct ? [] : ['--direct=0', '--invalidate=1']
    this.qemuImgOptions = direct ? ['-t', 'none'] : []
    this.description = direct
      ? 'the bare file in a plain folder on the same disk, no FUSE; the same fio options as the FUSE targets (O_DIRECT); qemu-img convert with -t none'
      : 'the same bare file, buffered: fio --direct=0 --invalidate=1 (fio drops the file\'s page cache before each job, so reads start ' +
        'cold and warm up as they go; not drop_caches, which would empty every target\'s cache and other users\')'
  }

  async setup (): Promise<void> {
    fs.mkdirSync(this.mount, { recursive: true })
  }

  async teardown (): Promise<void> {
    // The folder is inside the run's temporary folder, which cleanup.ts removes.
  }

  pids (): number[] {
    return []
  }

  pidLabels (): string[] {
    return []
  }

  dataDirs (): string[] {
    return [path.resolve(this.mount)]
  }

  problem (): string | null {
    return null
  }
}
