// The copy-on-write measurements, on targets with snapshots and clones (Sheep) only: the second
// table of the report. Everything goes through the target's control socket and its mount.
//
// snapshot: a 1 TiB image gets 1 GiB written, 16 MiB at the start of each 16 GiB (64 fio threads,
// seq write 1M O_DIRECT, --offset_increment), so that the written blocks reach every page of the
// owner table rather than one: a snapshot or clone copies the table pages that hold entries. Then
// five times over: `snapshot.create` on a new tag, then `image.clone` of that snapshot into a new
// image, each timed in this process with process.hrtime around the control-socket call (connect,
// request, answer). The store's disk usage (du) is taken before and after each pair, the backing
// filesystem synced first, and split into the two new inodes (their vid folders: the image's new
// inode and the clone's) and the rest.
//
// clone-randwrite: a new image of the test file's size is written once (seq write 1M O_DIRECT), the
// 4K randwrite qd1 job of the main table runs on it (every block is the image's own: "plain"),
// then it is snapshotted and cloned, and the same job runs on the clone, whose first write into
// each sub-block copies that sub-block up. The clone's `allocated` afterwards is how much was copied
// up (ramp included).
//
// Images are named per run and deleted at the end of each section (clones before their source).

import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import type { ImageInfo } from '../src/cow/image-store'
import { SUBBLOCKS } from '../src/cow/owner-table'
import * as cleanup from './cleanup'
import { FILL_OPTIONS, FIO_JOBS, runFio, type FioTiming } from './fio'
import { COW_BIG_IMAGE, COW_BIG_WRITTEN, type CowRowId } from './rows'
import type { CowAccess, Target } from './targets'

const MiB = 2 ** 20
const GiB = 2 ** 30

/** How the 1 GiB is laid out over the 1 TiB image: 64 regions of 16 MiB, 16 GiB apart. */
const FILL_REGIONS = 64
const FILL_REGION = COW_BIG_WRITTEN / FILL_REGIONS
const FILL_STRIDE = COW_BIG_IMAGE / FILL_REGIONS
const PAIRS = 5

export interface CowContext {
  target: Target
  cow: CowAccess
  run: number
  /** The test file's size: the clone-randwrite image's. */
  size: number
  timing: FioTiming
  /** Flushes the backing filesystem's dirty pages. */
  sync: () => void
  /** Throws once the benchmark is interrupted. */
  check: () => void
  say: (line: string) => void
}

/** Values by row: several samples (each call, each pair) or one per run. */
export type CowSamples = Partial<Record<CowRowId, number[]>>

export interface CowOutcome {
  samples: CowSamples
  /** One line for the report on what was seen beyond the table's numbers. */
  detail: string
}

/** Bytes the files under dir occupy on disk; 0 for a folder that does not exist. */
export function diskUsage (dir: string): number {
  if (!fs.existsSync(dir)) return 0
  const r = spawnSync('du', ['-s', '-B1', dir], { encoding: 'utf8', timeout: 60_000 })
  const n = Number((r.stdout ?? '').split(/\s/)[0])
  if (r.status !== 0 || !Number.isFinite(n)) throw new Error(`du ${dir} failed: ${(r.stderr ?? '').trim() || `exit ${r.status}`}`)
  return n
}

async function elapsedMs<T> (fn: () => Promise<T>): Promise<{ ms: number, value: T }> {
  const start = process.hrtime.bigint()
  const value = await fn()
  return { ms: Number(process.hrtime.bigint() - start) / 1e6, value }
}

async function imageInfo (cow: CowAccess, name: string): Promise<ImageInfo> {
  const info = (await cow.call('image.list', {})).find(i => i.name === name)
  if (info === undefined) throw new Error(`image.list does not list ${name}`)
  return info
}

/** Deletes images, in order, ignoring any that are gone; for tidying up after a section. */
async function removeImages (ctx: CowContext, names: string[]): Promise<void> {
  for (const name of names) {
    // Interrupted: the daemon is being stopped and its store removed anyway.
    if (cleanup.isClosing()) return
    try {
      await ctx.cow.call('image.delete', { name })
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') ctx.say(`bench: cannot delete ${name} on ${ctx.target.name}: ${(err as Error).message}`)
    }
  }
}

const fmtMs = (ms: number): string => ms.toFixed(1)

export async function measureSnapshot (ctx: CowContext): Promise<CowOutcome> {
  const { cow, run } = ctx
  const name = `cow-1t-r${run}`
  const clones = Array.from({ length: PAIRS }, (_, i) => `${name}-clone${i + 1}`)
  const out: Required<Pick<CowSamples, 'snapshot-ms' | 'clone-ms' | 'cow-growth' | 'cow-tables' | 'cow-rest'>> =
    { 'snapshot-ms': [], 'clone-ms': [], 'cow-growth': [], 'cow-tables': [], 'cow-rest': [] }
  let fillMiBps = 0
  try {
    ctx.check()
    await cow.call('image.create', { name, size: COW_BIG_IMAGE })
    const fill = await runFio('cow-fill', path.join(ctx.target.mount, name), FILL_REGION,
      [...FILL_OPTIONS, `--numjobs=${FILL_REGIONS}`, `--offset_increment=${FILL_STRIDE}`], null)
    if (fill.write.io_bytes !== COW_BIG_WRITTEN) throw new Error(`the fill wrote ${fill.write.io_bytes} bytes, not ${COW_BIG_WRITTEN}`)
    const filled = await imageInfo(cow, name)
    ctx.say(`[run ${ctx.run}] snapshot: ${name} holds ${Math.round(filled.allocated / MiB)} MiB after the fill ` +
      `(${Math.round(fill.write.bw_bytes / MiB)} MiB/s)`)
    if (filled.allocated !== COW_BIG_WRITTEN) throw new Error(`${name} holds ${filled.allocated} bytes after 1 GiB was written into it`)
    fillMiBps = fill.write.bw_bytes / MiB
    for (let i = 1; i <= PAIRS; i++) {
      ctx.check()
      ctx.sync()
      const before = diskUsage(cow.storeDir)
      const snap = await elapsedMs(async () => await cow.call('snapshot.create', { name, tag: `s${i}` }))
      const clone = await elapsedMs(async () => await cow.call('image.clone', { source: name, tag: `s${i}`, name: clones[i - 1] as string }))
      ctx.sync()
      const after = diskUsage(cow.storeDir)
      // The image carries on in a new inode; the clone is another. Neither has data objects yet.
      const image = await imageInfo(cow, name)
      const tables = diskUsage(cow.vidDir(image.vid)) + diskUsage(cow.vidDir(clone.value.vid))
      if (image.allocated !== 0 || clone.value.allocated !== 0) {
        throw new Error(`after snapshot s${i}, ${name} owns ${image.allocated} bytes and its clone ${clone.value.allocated}: both should own none`)
      }
      out['snapshot-ms'].push(snap.ms)
      out['clone-ms'].push(clone.ms)
      out['cow-growth'].push((after - before) / 1024)
      out['cow-tables'].push(tables / 1024)
      out['cow-rest'].push((after - before - tables) / 1024)
      ctx.say(`[run ${ctx.run}] snapshot: pair ${i}: snapshot.create ${fmtMs(snap.ms)} ms, image.clone ${fmtMs(clone.ms)} ms, ` +
        `store +${Math.round((after - before) / 1024)} KiB (new inodes ${Math.round(tables / 1024)} KiB)`)
    }
  } finally {
    await removeImages(ctx, [...clones, name])
  }
  const range = (xs: number[]): string => `${fmtMs(Math.min(...xs))}–${fmtMs(Math.max(...xs))}`
  return {
    samples: out,
    detail: `1 GiB written into the 1 TiB image at ${Math.round(fillMiBps)} MiB/s (64 fio threads, ${FILL_REGION / MiB} MiB each, ` +
      `${FILL_STRIDE / GiB} GiB apart); snapshot.create calls ${range(out['snapshot-ms'])} ms in order ` +
      `${out['snapshot-ms'].map(fmtMs).join(', ')}; image.clone calls ${range(out['clone-ms'])} ms`
  }
}

export async function measureCloneRandwrite (ctx: CowContext): Promise<CowOutcome> {
  const { cow, run, size } = ctx
  const plain = `cow-plain-r${run}`
  const clone = `cow-clone-r${run}`
  const job = FIO_JOBS.find(j => j.row === 'randwrite-qd1')
  if (job === undefined) throw new Error('no randwrite-qd1 fio job')
  try {
    ctx.check()
    await cow.call('image.create', { name: plain, size })
    const plainFile = path.join(ctx.target.mount, plain)
    await runFio('cow-plain-fill', plainFile, size, FILL_OPTIONS, null)
    const filled = await imageInfo(cow, plain)
    if (filled.allocated !== size) throw new Error(`${plain} holds ${filled.allocated} bytes after it was written whole (${size})`)
    ctx.sync()
    const p = job.value(await runFio('cow-plain', plainFile, size, job.options, ctx.timing))
    ctx.sync()
    ctx.check()
    await cow.call('snapshot.create', { name: plain, tag: 'base' })
    const made = await cow.call('image.clone', { source: plain, tag: 'base', name: clone })
    if (made.allocated !== 0) throw new Error(`the new clone ${clone} already owns ${made.allocated} bytes`)
    ctx.sync()
    const cloneJob = await runFio('cow-clone', path.join(ctx.target.mount, clone), size, job.options, ctx.timing)
    const c = job.value(cloneJob)
    const copied = (await imageInfo(cow, clone)).allocated
    const sub = made.objectSize / SUBBLOCKS
    const detail = `${made.objectSize / MiB} MiB objects, ${sub / 1024} KiB sub-blocks; the clone's job made ` +
      `${cloneJob.write.total_ios} measured writes (plus its ${ctx.timing.ramp} s ramp) and ${copied / sub} sub-blocks were copied up, ` +
      `${(100 * copied / size).toFixed(1)} % of the image`
    ctx.say(`[run ${ctx.run}] clone-randwrite: plain ${Math.round(p)} IOPS, clone ${Math.round(c)} IOPS (${(c / p).toFixed(2)}); ${detail}`)
    return {
      samples: { 'plain-randwrite': [p], 'clone-randwrite': [c], 'clone-ratio': [c / p], 'clone-copied': [copied / MiB] },
      detail
    }
  } finally {
    await removeImages(ctx, [clone, plain])
  }
}

/** Extra space on the backing disk the copy-on-write sections need at most, beyond the main table's. */
export function cowSpace (size: number): number {
  // The 1 TiB image's 1 GiB and its inodes, or the plain image and a clone copied up wholly.
  return Math.max(COW_BIG_WRITTEN + 64 * MiB, 2 * size) + GiB / 4
}
