// `npm run bench`: Sheep against the Node passthrough FUSE filesystem (shared/bench/passthrough.js),
// side by side in one run on the same disk, with the ratios shared/notes/performance.md sets as
// targets, and against the bare file on that disk with no FUSE (ext4.ts: O_DIRECT and buffered),
// the physical limit. Sheep runs as one daemon with one copy ("1 host", the kernel-protocol
// frontend, and unless --no-libfuse2 once more on libfuse 2 for comparison) and, unless
// --cluster none, as a cluster of three daemons on this host with three copies (cluster.ts), once
// with object traffic over direct TCP and once over Hyperswarm only. Beside each FUSE target's
// figure goes its daemons' CPU per request (cpu.ts). Prints Markdown tables (one host; three
// nodes) and writes them to bench/results/latest.md (and the raw samples to latest.json).
//
// How a run goes: all the filesystems are mounted at once under one temporary folder. For each
// measurement the baseline goes first and the Sheep columns right after it, so that the machine's
// drift hits all alike; the backing filesystem is synced after every job so one job's writeback
// does not land in the next. Each target gets a 1 GiB file, written once (the "first write" row) so
// that later reads find real data, then the time-based fio jobs on it; then a qemu-img convert of a
// 1 GiB raw file from the local disk; then the daemons' memory while a 2 GiB image is written.
// Around the first write, and around an overwrite of part of the file right after it, the bytes
// the daemons write to their stores are counted (writes.ts). With --runs N all of that repeats N
// times and each cell is the median.
//
// Then, on the one-host Sheep target only (the passthrough has no snapshots; cow.ts measures one
// store, not a cluster's three), the copy-on-write measurements of cow.ts, printed as a second table: snapshot and clone time of a 1 TiB image with
// 1 GiB written and the store's growth from them ("snapshot"), and 4K random writes into a fresh
// clone of a fully written image against the same image before ("clone-randwrite").
//
// With the cluster columns, each pass also measures the floor the transport alone puts under a
// three-copy write (floor.ts), printed after the table with the best ratios it leaves the write rows.
//
// Everything started is stopped on the way out, on failure and on Ctrl-C too: see cleanup.ts.

import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { parseArgs } from 'node:util'
import { formatSize, parseSize } from '../src/units'
import * as cleanup from './cleanup'
import { type CowContext, type CowOutcome, cowSpace, measureCloneRandwrite, measureSnapshot } from './cow'
import { CpuMeter } from './cpu'
import { PlainFileTarget } from './ext4'
import { FILL_OPTIONS, FIO_JOBS, type FioJob, type FioJobResult, requestsOf, runFio } from './fio'
import { formatFloor, measureFloor } from './floor'
import { runTool, syncFs, versionOf } from './proc'
import { CLUSTER_PATHS, type ClusterPath, ClusterTarget } from './cluster'
import { cowTable, floorSection, median, Results, resultsTable, rssLines, SKIPPED, type TargetInfo, writesTable } from './report'
import { COW_ROWS, COW_SECTIONS, type CowSectionId, FLOOR_IDS, ONE_HOST_GOALS, ROWS, type RowId, THREE_COPIES_GOALS } from './rows'
import { RssSampler } from './rss'
import { PassthroughTarget, SheepTarget, type Target } from './targets'
import { settle, type WriteCounters, writeCounters, type WriteKind, writeSample } from './writes'

const USAGE = `usage: node dist/bench/run.js [options]   (npm run bench -- [options])

  --runtime SECONDS   measured time of each time-based fio job (default 8)
  --ramp SECONDS      fio ramp time before measuring (default 1)
  --runs N            repeat everything N times; each cell is the median (default 1)
  --size SIZE         test file and qemu-img convert source size (default 1G)
  --rss-size SIZE     image written while sampling the daemon's memory (default 2G)
  --dir DIR           where the temporary folder goes; it must be on the disk to test (default ${os.tmpdir()})
  --only LIST         comma-separated rows to run: ${ROWS.filter(r => r.id !== 'first-write').map(r => r.id).join(', ')}, rss,
                      store-writes, floor, and for the copy-on-write table (one-host Sheep only): ${COW_SECTIONS.join(', ')}
                      (the first write always runs: it makes the test file)
  --no-libfuse2       without the "sheep (1 host, libfuse2)" column (sheep start --fuse libfuse2)
  --cluster LIST      the three-node cluster columns: ${CLUSTER_PATHS.join(', ')} (default both), or none; with any,
                      "floor" also runs: round trips to two child processes over Sheep's own TCP
                      transport (bench/floor.ts), and the best ratios they leave seq-write,
                      randwrite-qd1 and fdatasync against the passthrough
  --no-cluster        the same as --cluster none
  -h, --help

Exit status: 0 when every cell was measured (whether or not the targets are met), 1 otherwise.`

interface Options {
  runtime: number
  ramp: number
  runs: number
  size: number
  rssSize: number
  dir: string
  only: Set<string> | null
  /** The three-node cluster columns to add, by how their nodes talk. */
  cluster: ClusterPath[]
  /** Whether to add a one-host Sheep column on the libfuse 2 frontend. */
  libfuse2: boolean
}

function usageError (message: string): never {
  process.stderr.write(`bench: ${message}\n\n${USAGE}\n`)
  process.exit(2)
}

function parseOptions (argv: string[]): Options {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        runtime: { type: 'string' },
        ramp: { type: 'string' },
        runs: { type: 'string' },
        size: { type: 'string' },
        'rss-size': { type: 'string' },
        dir: { type: 'string' },
        only: { type: 'string' },
        cluster: { type: 'string' },
        'no-cluster': { type: 'boolean' },
        'no-libfuse2': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      },
      strict: true,
      allowPositionals: false
    })
  } catch (err) {
    usageError((err as Error).message)
  }
  const v = parsed.values
  if (v.help === true) {
    process.stdout.write(USAGE + '\n')
    process.exit(0)
  }
  const int = (text: string | undefined, def: number, min: number, what: string): number => {
    if (text === undefined) return def
    if (!/^\d+$/.test(text) || Number(text) < min) usageError(`bad ${what} ${JSON.stringify(text)}: a whole number, at least ${min}`)
    return Number(text)
  }
  const size = (text: string | undefined, def: number, what: string): number => {
    if (text === undefined) return def
    const n = parseSize(text)
    if (n === null || n < 2 ** 20 || n % 2 ** 20 !== 0) usageError(`bad ${what} ${JSON.stringify(text)}: a whole number of MiB, such as 512M or 1G`)
    return n
  }
  let only: Set<string> | null = null
  if (v.only !== undefined) {
    const known = new Set<string>([...ROWS.map(r => r.id), 'rss', 'store-writes', 'floor', ...COW_SECTIONS])
    only = new Set(v.only.split(',').map(s => s.trim()).filter(Boolean))
    for (const id of only) if (!known.has(id)) usageError(`unknown row ${JSON.stringify(id)} in --only`)
  }
  let cluster: ClusterPath[] = [...CLUSTER_PATHS]
  if (v['no-cluster'] === true) {
    if (v.cluster !== undefined && v.cluster !== 'none') usageError('--no-cluster and --cluster together')
    cluster = []
  } else if (v.cluster !== undefined) {
    const names = v.cluster.split(',').map(s => s.trim()).filter(Boolean)
    if (names.length === 1 && names[0] === 'none') cluster = []
    else {
      for (const name of names) if (!(CLUSTER_PATHS as readonly string[]).includes(name)) usageError(`unknown cluster path ${JSON.stringify(name)} in --cluster`)
      // In a fixed order, whatever the order given: the columns should not move between runs.
      cluster = CLUSTER_PATHS.filter(p => names.includes(p))
    }
  }
  const dir = path.resolve(v.dir ?? os.tmpdir())
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) usageError(`--dir ${dir} is not a folder`)
  return {
    runtime: int(v.runtime, 8, 1, '--runtime'),
    ramp: int(v.ramp, 1, 0, '--ramp'),
    runs: int(v.runs, 1, 1, '--runs'),
    size: size(v.size, 2 ** 30, '--size'),
    rssSize: size(v['rss-size'], 2 * 2 ** 30, '--rss-size'),
    dir,
    only,
    cluster,
    libfuse2: v['no-libfuse2'] !== true
  }
}

/** The repository root: the nearest folder up from here whose package.json names "sheep". */
function repoRoot (): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    try {
      if ((JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string }).name === 'sheep') return dir
    } catch {}
    if (path.dirname(dir) === dir) throw new Error(`cannot find the sheep repository above ${__dirname}`)
  }
}

/** The commit the run measures, marked when the work tree differs from it. */
function commitOf (root: string): string {
  const head = spawnSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' })
  if (head.status !== 0) return 'unknown'
  const dirty = spawnSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' })
  return head.stdout.trim() + (dirty.status === 0 && dirty.stdout.trim() !== '' ? ' (with uncommitted changes)' : '')
}

/** Everything the run needs, checked before anything starts; throws with what to do. */
function preflight (root: string, passthrough: string, opts: Options): { fio: string, qemuImg: string } {
  const problems: string[] = []
  if (!fs.existsSync(passthrough)) {
    problems.push(`the baseline is missing: expected the passthrough FUSE filesystem at ${passthrough} (shared/bench/passthrough.js beside the repository)`)
  }
  const fio = versionOf('fio')
  if (fio === null) problems.push('fio is not installed (apt-get install fio; `npm run bench` installs it through scripts/ensure-deps.js --bench)')
  else if (spawnSync('fio', ['--enghelp=libaio'], { stdio: 'ignore' }).status !== 0) problems.push('this fio has no libaio engine')
  const qemuImg = versionOf('qemu-img')
  if (qemuImg === null) problems.push('qemu-img is not installed (apt-get install qemu-utils)')
  if (versionOf('fusermount', ['-V']) === null) problems.push('fusermount is not installed (apt-get install fuse)')
  if (!fs.existsSync('/dev/fuse')) problems.push('/dev/fuse does not exist')
  if (!fs.existsSync(path.join(root, 'dist', 'bin', 'sheep.js'))) problems.push(`sheep is not built: run \`npx tsc -p .\` in ${root}`)
  if (!fs.existsSync(path.join(root, 'node_modules', 'fuse-native'))) problems.push(`fuse-native is not installed: run \`npm ci\` in ${root}`)
  // A test file per target (three copies of it in a cluster), the convert source, one convert copy,
  // memory image or copy-on-write section at a time (three copies again in a cluster), and room to spare.
  const cow = COW_SECTIONS.some(id => opts.only === null || opts.only.has(id)) ? cowSpace(opts.size) : 0
  const copies = opts.cluster.length > 0 ? 3 : 1
  // The test files: passthrough, two ext4 columns, one or two one-host Sheep columns, three copies per cluster.
  const need = (4 + (opts.libfuse2 ? 1 : 0) + 3 * opts.cluster.length) * opts.size + opts.size + Math.max(copies * opts.size, copies * opts.rssSize, cow) + 2 ** 30
  const st = fs.statfsSync(opts.dir)
  if (st.bavail * st.bsize < need) problems.push(`${opts.dir} has ${formatSize(st.bavail * st.bsize)} free; the benchmark needs about ${formatSize(need)}`)
  if (problems.length > 0) throw new Error(problems.join('\n'))
  return { fio: fio ?? '', qemuImg: qemuImg ?? '' }
}

function filesystemOf (dir: string): string {
  const r = spawnSync('findmnt', ['-n', '-o', 'FSTYPE,SOURCE', '-T', dir], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim().replace(/\s+/, ' on ') : 'unknown filesystem'
}

/** A file of random bytes on the local disk, for qemu-img convert (random so that nothing is skipped as zeros). */
function makeRandomFile (file: string, size: number): void {
  const buf = Buffer.alloc(2 ** 20)
  const fd = fs.openSync(file, 'w')
  try {
    for (let off = 0; off < size; off += buf.length) {
      crypto.randomFillSync(buf)
      fs.writeSync(fd, buf, 0, Math.min(buf.length, size - off), off)
    }
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * Reads every file under the given paths, so that they start a job in the page cache. The machine
 * reclaims cold pages by itself, so without this the target measured second would find the other's
 * leftovers (the convert source above all) warmer or colder than the first did.
 */
function warm (paths: string[]): void {
  const buf = Buffer.allocUnsafe(4 * 2 ** 20)
  const readAll = (file: string): void => {
    const fd = fs.openSync(file, 'r')
    try {
      while (fs.readSync(fd, buf, 0, buf.length, null) > 0) { /* reading is the point */ }
    } finally {
      fs.closeSync(fd)
    }
  }
  for (const p of paths) {
    const st = fs.statSync(p, { throwIfNoEntry: false })
    if (st === undefined) continue
    if (st.isFile()) readAll(p)
    else if (st.isDirectory()) for (const name of fs.readdirSync(p)) warm([path.join(p, name)])
  }
}

function say (line: string): void {
  process.stderr.write(line + '\n')
}

function removeFile (file: string): void {
  fs.rmSync(file, { force: true })
}

/** For tidying up between passes: a target that has failed may not answer any more. */
function removeQuietly (file: string): void {
  try { removeFile(file) } catch {}
}

/**
 * What a failed measurement says: its error, then why the target broke (a daemon exited) or, with
 * every daemon still running, their last output.
 */
function failureMessage (t: Target, err: unknown): { message: string, dead: string | null } {
  const dead = t.problem()
  const more = dead ?? t.diagnose?.() ?? null
  return { message: (err as Error).message + (more === null ? '' : `\n  ${more.replace(/\n/g, '\n  ')}`), dead }
}

/** How much of the test file the store-writes overwrite rewrites: enough to swamp the daemons' background writes, quick at cluster speeds. */
const OVERWRITE_BYTES = 256 * 2 ** 20

/** A measurement's figure with something to say beside it in the progress line. */
interface Measured {
  value: number
  detail: string
}

class Bench {
  private readonly opts: Options
  private readonly targets: Target[]
  private readonly results: Results
  private readonly syncDir: string
  private readonly convertSource: string
  /** Targets found broken (a daemon died): their remaining cells are skipped. */
  private readonly broken = new Map<string, string>()
  /** For the progress lines: the longest target name. */
  private readonly nameWidth: number
  interrupted = false

  constructor (opts: Options, targets: Target[], results: Results, syncDir: string, convertSource: string) {
    this.opts = opts
    this.targets = targets
    this.results = results
    this.syncDir = syncDir
    this.convertSource = convertSource
    this.nameWidth = Math.max(...targets.map(t => t.name.length))
  }

  /** A target that did not start: every measurement on it is skipped. */
  markBroken (name: string, why: string): void {
    this.broken.set(name, why)
  }

  private wanted (id: string): boolean {
    return id === 'first-write' || this.opts.only === null || this.opts.only.has(id)
  }

  private testFile (t: Target): string {
    return path.join(t.mount, 'bench.img')
  }

  /** Runs one measurement on one target, records its value or its error, and syncs the disk after it. */
  private async measure (row: RowId, t: Target, run: number, fn: () => Promise<number | Measured>): Promise<void> {
    if (this.interrupted) throw new Error('interrupted')
    const cell = this.results.cell(row, t.name)
    const unit = ROWS.find(r => r.id === row)?.unit ?? ''
    const prefix = `[run ${run}/${this.opts.runs}] ${row.padEnd(14)} ${t.name.padEnd(this.nameWidth)}`
    if (this.broken.has(t.name)) {
      cell.errors.push(SKIPPED)
      return
    }
    try {
      const out = await fn()
      const v = typeof out === 'number' ? out : out.value
      cell.samples.push(v)
      say(`${prefix} ${unit === 's' ? v.toFixed(2) : Math.round(v)} ${unit}${typeof out === 'number' ? '' : `, ${out.detail}`}`)
    } catch (err) {
      if (this.interrupted) throw err
      const { message, dead } = failureMessage(t, err)
      cell.errors.push(message)
      say(`${prefix} FAILED: ${message}`)
      if (dead !== null) this.broken.set(t.name, dead)
    } finally {
      if (!this.interrupted) {
        syncFs(this.syncDir)
        await this.verify(t, row)
      }
    }
  }

  /** The target's own check after a measurement (a cluster's view still whole), outside the timed part. */
  private async verify (t: Target, after: string): Promise<void> {
    if (t.verify === undefined || this.broken.has(t.name)) return
    try {
      await t.verify(after)
    } catch {}
  }

  /**
   * Counts what the target's daemons write while `write` runs, against the bytes the guest wrote
   * (what it resolves to). Counting failures are recorded on their own: the job's cell stands.
   */
  private async countWrites (kind: WriteKind, t: Target, runNo: number, write: () => Promise<number>): Promise<void> {
    const allocated = kind === 'first-write'
    let before: WriteCounters | null = null
    try {
      // Whatever the previous job left the daemons doing is not this write's.
      await settle(t)
      before = writeCounters(t, allocated)
    } catch (err) {
      this.results.addWriteError(t.name, `before the ${kind}: ${(err as Error).message}`)
    }
    const guest = await write()
    if (before === null) return
    try {
      await settle(t)
      const sample = writeSample(kind, guest, before, writeCounters(t, allocated))
      this.results.addWrites(t.name, sample)
      this.results.pidLabels.set(t.name, t.pidLabels())
      const total = sample.perPid.reduce((a, b) => a + b, 0)
      say(`[run ${runNo}/${this.opts.runs}] ${'store-writes'.padEnd(14)} ${t.name.padEnd(this.nameWidth)} ${kind}: ${(total / guest).toFixed(2)} written` +
        `${sample.perPid.length > 1 ? ` (${sample.perPid.map(n => (n / guest).toFixed(2)).join(' + ')})` : ''}` +
        `${sample.allocatedGrowth === null ? '' : `, ${(sample.allocatedGrowth / guest).toFixed(2)} allocated`} per guest byte`)
    } catch (err) {
      this.results.addWriteError(t.name, `after the ${kind}: ${(err as Error).message}`)
    }
  }

  /** Overwrites the start of the test file as the first write wrote it, counting the store writes. */
  private async overwrite (t: Target, runNo: number): Promise<void> {
    if (this.interrupted) throw new Error('interrupted')
    if (this.broken.has(t.name) || t.kind !== 'fuse') return
    const prefix = `[run ${runNo}/${this.opts.runs}] ${'store-writes'.padEnd(14)} ${t.name.padEnd(this.nameWidth)}`
    try {
      await this.countWrites('overwrite', t, runNo, async () =>
        (await runFio('overwrite', this.testFile(t), Math.min(OVERWRITE_BYTES, this.opts.size), FILL_OPTIONS, null)).write.io_bytes)
    } catch (err) {
      if (this.interrupted) throw err
      const { message, dead } = failureMessage(t, err)
      this.results.addWriteError(t.name, `overwrite: ${message}`)
      say(`${prefix} FAILED: ${message}`)
      if (dead !== null) this.broken.set(t.name, dead)
    } finally {
      if (!this.interrupted) {
        syncFs(this.syncDir)
        await this.verify(t, 'the store-writes overwrite')
      }
    }
  }

  private async fio (job: FioJob, t: Target, run: number): Promise<void> {
    const fuse = t.kind === 'fuse'
    // The first write is also where the store writes of a new file are counted (writes.ts); a
    // plain folder has no daemon whose writes could be counted.
    const count = fuse && job.row === 'first-write' && this.wanted('store-writes')
    await this.measure(job.row, t, run, async () => {
      const file = this.testFile(t)
      if (!job.timeBased) removeFile(file)
      // The FUSE targets' backing files go into the page cache first; the bare file's do not: its
      // O_DIRECT column reads the disk anyway, and its buffered one has fio drop them (ext4.ts).
      if (job.warm && fuse) warm(t.dataDirs())
      const timing = job.timeBased ? { runtime: this.opts.runtime, ramp: this.opts.ramp } : null
      const cpu = fuse ? new CpuMeter(t.pids(), timing?.ramp ?? 0) : null
      const go = async (): Promise<FioJobResult> => {
        const res = await runFio(job.row, file, this.opts.size, [...job.options, ...(t.fioOptions ?? [])], timing, () => cpu?.start())
        cpu?.stop()
        return res
      }
      let r: FioJobResult | undefined
      try {
        if (count) await this.countWrites('first-write', t, run, async () => (r = await go()).write.io_bytes)
        else r = await go()
      } finally {
        cpu?.cancel()
      }
      const value = job.value(r as FioJobResult)
      if (cpu === null) return value
      // A failed CPU reading does not void the job's figure: it is recorded on its own.
      const cpuCell = this.results.cpuCell(job.row, t.name)
      try {
        const us = cpu.finish(requestsOf(r as FioJobResult))
        cpuCell.samples.push(us)
        return { value, detail: `daemon CPU ${us.toFixed(1)} µs/request` }
      } catch (err) {
        cpuCell.errors.push((err as Error).message)
        return { value, detail: `daemon CPU not measured: ${(err as Error).message}` }
      }
    })
  }

  private async convert (t: Target, run: number): Promise<void> {
    const dest = path.join(t.mount, 'convert.img')
    await this.measure('convert', t, run, async () => {
      removeFile(dest)
      warm([this.convertSource])
      try {
        const r = await runTool('qemu-img', ['convert', ...(t.qemuImgOptions ?? []), '-f', 'raw', '-O', 'raw', this.convertSource, dest],
          { timeoutMs: Math.max(600, this.opts.size / 2 ** 21) * 1000 })
        if (r.code !== 0) throw new Error(`qemu-img convert failed (${r.code ?? r.signal}): ${(r.stderr || r.stdout).trim()}`)
        const got = fs.statSync(dest).size
        if (got !== this.opts.size) throw new Error(`qemu-img convert made a ${got}-byte file, not ${this.opts.size}`)
        return r.seconds
      } finally {
        if (!this.interrupted) removeQuietly(dest)
      }
    })
  }

  private async memory (t: Target, run: number): Promise<void> {
    if (this.interrupted) throw new Error('interrupted')
    if (this.broken.has(t.name) || t.kind !== 'fuse') return
    const file = path.join(t.mount, 'rss.img')
    const prefix = `[run ${run}/${this.opts.runs}] ${'rss'.padEnd(14)} ${t.name.padEnd(this.nameWidth)}`
    try {
      removeFile(file)
      const sampler = new RssSampler(t.pids())
      sampler.begin()
      let job
      try {
        job = await runFio('rss', file, this.opts.rssSize, FILL_OPTIONS, null)
      } catch (err) {
        sampler.end()
        throw err
      }
      const report = sampler.end()
      const mibps = job.write.bw_bytes / 2 ** 20
      this.results.addRss(t.name, { ...report, mibps, labels: t.pidLabels() })
      say(`${prefix} peak ${Math.round(report.peakMiB)} MiB (from ${Math.round(report.startMiB)} MiB), written at ${Math.round(mibps)} MiB/s`)
    } catch (err) {
      if (this.interrupted) throw err
      const { message, dead } = failureMessage(t, err)
      const list = this.results.rssErrors.get(t.name) ?? []
      list.push(message)
      this.results.rssErrors.set(t.name, list)
      say(`${prefix} FAILED: ${message}`)
      if (dead !== null) this.broken.set(t.name, dead)
    } finally {
      if (!this.interrupted) {
        removeQuietly(file)
        syncFs(this.syncDir)
        await this.verify(t, 'the memory measurement')
      }
    }
  }

  /**
   * One copy-on-write section on one target: records its samples (several rows each) or its
   * error (one list per section: its rows without samples show "failed"), and syncs the disk after it.
   */
  private async cowSection (section: CowSectionId, t: Target, run: number, fn: (ctx: CowContext) => Promise<CowOutcome>): Promise<void> {
    if (this.interrupted) throw new Error('interrupted')
    const cow = t.cow
    if (cow === undefined) return
    const errors = this.results.cowErrors(section, t.name)
    const prefix = `[run ${run}/${this.opts.runs}] ${section.padEnd(14)} ${t.name.padEnd(this.nameWidth)}`
    if (this.broken.has(t.name)) {
      errors.push(SKIPPED)
      return
    }
    const ctx: CowContext = {
      target: t,
      cow,
      run,
      size: this.opts.size,
      timing: { runtime: this.opts.runtime, ramp: this.opts.ramp },
      sync: () => syncFs(this.syncDir),
      check: () => { if (this.interrupted) throw new Error('interrupted') },
      say
    }
    try {
      const out = await fn(ctx)
      const shown: string[] = []
      for (const row of COW_ROWS.filter(r => r.section === section)) {
        const xs = out.samples[row.id] ?? []
        this.results.cowCell(row.id, t.name).samples.push(...xs)
        if (xs.length > 0) shown.push(`${row.id} ${xs.length === 1 ? (xs[0] as number).toFixed(row.unit === 'ratio' ? 2 : 0) : `median ${(median(xs) ?? 0).toFixed(1)}`}`)
      }
      let details = this.results.cowDetails.get(t.name)
      if (details === undefined) this.results.cowDetails.set(t.name, details = new Map())
      details.set(section, this.opts.runs > 1 ? `run ${run}: ${out.detail}` : out.detail)
      say(`${prefix} ${shown.join(', ')}`)
    } catch (err) {
      if (this.interrupted) throw err
      const dead = t.problem()
      const message = (err as Error).message + (dead === null ? '' : `\n  ${dead}`)
      errors.push(message)
      say(`${prefix} FAILED: ${message}`)
      if (dead !== null) this.broken.set(t.name, dead)
    } finally {
      if (!this.interrupted) syncFs(this.syncDir)
    }
  }

  /** The transport's floor under a three-copy write (floor.ts); no target of its own, no disk. */
  private async floor (run: number): Promise<void> {
    if (this.interrupted) throw new Error('interrupted')
    const prefix = `[run ${run}/${this.opts.runs}] ${'floor'.padEnd(14)}`
    try {
      const r = await measureFloor()
      this.results.floor.push(r)
      say(`${prefix} ${FLOOR_IDS.map(id => formatFloor(id, r[id])).join('; ')}`)
    } catch (err) {
      if (this.interrupted) throw err
      this.results.floorErrors.push((err as Error).message)
      say(`${prefix} FAILED: ${(err as Error).message}`)
    }
  }

  /** One pass over every measurement, each target in turn for each. */
  async pass (run: number): Promise<void> {
    for (const job of FIO_JOBS) {
      if (!this.wanted(job.row)) continue
      for (const t of this.targets) await this.fio(job, t, run)
      if (job.row === 'first-write' && this.wanted('store-writes')) for (const t of this.targets) await this.overwrite(t, run)
    }
    // Right after the write rows it bounds, so that it meets the machine in the same state.
    if (this.opts.cluster.length > 0 && this.wanted('floor')) await this.floor(run)
    if (this.wanted('convert')) for (const t of this.targets) await this.convert(t, run)
    if (this.wanted('rss')) for (const t of this.targets) await this.memory(t, run)
    const cowTargets = this.targets.filter(t => t.cow !== undefined)
    if (this.wanted('snapshot')) for (const t of cowTargets) await this.cowSection('snapshot', t, run, measureSnapshot)
    if (this.wanted('clone-randwrite')) for (const t of cowTargets) await this.cowSection('clone-randwrite', t, run, measureCloneRandwrite)
    // A new pass starts with a new file, written anew by the first-write job.
    for (const t of this.targets) if (!this.broken.has(t.name)) removeQuietly(this.testFile(t))
  }
}

async function main (): Promise<number> {
  const opts = parseOptions(process.argv.slice(2))
  const root = repoRoot()
  const passthroughScript = path.join(root, '..', 'shared', 'bench', 'passthrough.js')
  let tools
  try {
    tools = preflight(root, passthroughScript, opts)
  } catch (err) {
    say(`bench: cannot run:\n${(err as Error).message}`)
    return 1
  }
  const loadBefore = os.loadavg()

  const base = fs.mkdtempSync(path.join(opts.dir, 'sheep-bench-'))
  cleanup.trackDir(base)
  say(`bench: working in ${base}`)
  // In this order in each measurement: the baseline, the physical limits, the one-host Sheep
  // columns, the clusters. The one-host table shows the first two groups and the one-host Sheep
  // columns; the three-node table the baseline and the clusters.
  const ext4 = [new PlainFileTarget(path.join(base, 'ext4-direct'), true), new PlainFileTarget(path.join(base, 'ext4-buffered'), false)]
  const oneHost: Target[] = [
    ...ext4,
    new SheepTarget(path.join(base, 'sheep'), { name: 'sheep (1 host)', root, copies: 1, goals: ONE_HOST_GOALS, fuse: 'kernel', cow: true }),
    ...(opts.libfuse2
      ? [new SheepTarget(path.join(base, 'sheep-libfuse2'), { name: 'sheep (1 host, libfuse2)', root, copies: 1, goals: {}, fuse: 'libfuse2', cow: false })]
      : [])
  ]
  const clusters: Target[] = opts.cluster.map(p => new ClusterTarget(path.join(base, `cluster-${p}`), { root, path: p, goals: THREE_COPIES_GOALS }))
  const targets: Target[] = [
    new PassthroughTarget(path.join(base, 'passthrough'), passthroughScript, path.join(root, 'node_modules')),
    ...oneHost,
    ...clusters
  ]
  /** The Sheep column that is also divided by the physical limits (the issue's "ratio to ext4"). */
  const limitsOf = (t: Target): string[] => t.name === 'sheep (1 host)' ? ext4.map(e => e.name) : []
  const rows = ROWS.filter(r => r.id === 'first-write' || opts.only === null || opts.only.has(r.id))
    .map(r => ({ ...r, label: r.label.replace('{size}', formatSize(opts.size)) }))
  const cowRows = COW_ROWS.filter(r => opts.only === null || opts.only.has(r.section))
    .map(r => ({ ...r, label: r.label.replace('{size}', formatSize(opts.size)) }))
  let results: Results | null = null
  let bench: Bench | null = null
  const onSignal = (signal: NodeJS.Signals): void => {
    if (bench?.interrupted === true || cleanup.isClosing()) {
      say(`bench: ${signal} again: killing everything now`)
      cleanup.cleanupSync()
      process.exit(130)
    }
    if (bench !== null) bench.interrupted = true
    say(`\nbench: ${signal}: stopping and cleaning up (again to force)`)
    void cleanup.cleanupAll().then(warnings => {
      for (const w of warnings) say(`bench: ${w}`)
      process.exit(signal === 'SIGINT' ? 130 : 143)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', onSignal)

  const started = Date.now()
  // A column that does not start (a cluster that does not form) is reported and skipped; the others
  // still run. Without the baseline there is nothing to compare with.
  const setupErrors = new Map<string, string>()
  try {
    for (const t of targets) {
      say(`bench: starting ${t.name}`)
      const t0 = Date.now()
      try {
        await t.setup()
      } catch (err) {
        if (t === targets[0] || cleanup.isClosing()) throw err
        // Setup's errors quote the daemon that failed already.
        const message = (err as Error).message
        say(`bench: ${t.name} did not start: ${message}`)
        setupErrors.set(t.name, message)
        try { await t.teardown() } catch {}
        continue
      }
      say(`bench: ${t.name} ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    }
    const source = path.join(base, 'convert-source.raw')
    if (opts.only === null || opts.only.has('convert')) {
      say(`bench: writing the ${formatSize(opts.size)} qemu-img convert source`)
      makeRandomFile(source, opts.size)
    }
    const info = (t: Target): TargetInfo => ({ name: t.name, description: t.description, goals: t.goals, copies: t.copies, kind: t.kind, limits: limitsOf(t) })
    results = new Results(rows, targets.map(info), cowRows, targets.filter(t => t.cow !== undefined && !setupErrors.has(t.name)).map(info))
    for (const [name, message] of setupErrors) results.setupErrors.set(name, message)
    bench = new Bench(opts, targets, results, base, source)
    for (const [name, message] of setupErrors) bench.markBroken(name, message)
    for (let run = 1; run <= opts.runs; run++) await bench.pass(run)
  } catch (err) {
    if (!cleanup.isClosing()) {
      say(`bench: ${(err as Error).message}`)
      await stopAll(targets, root, () => true)
      process.exitCode = 1
    }
    // Interrupted: the signal handler cleans up and exits.
    return 1
  }
  const finished = results
  await stopAll(targets, root, () => finished === null || finished.failures().length > 0)
  if (results === null) return 1
  const loadAfter = os.loadavg()
  const minutes = ((Date.now() - started) / 60_000).toFixed(1)
  const header = [
    `# Sheep benchmark: one host${opts.cluster.length > 0 ? ' and three nodes with three copies' : ''} against the Node passthrough and the bare ext4 file`,
    '',
    `${new Date().toISOString().replace('T', ' ').slice(0, 16)} UTC at commit ${commitOf(root)} on ${os.hostname()}: ${os.cpus().length} CPUs, Linux ${os.release()}, ` +
      `Node ${process.version}, ${tools.fio}, ${tools.qemuImg.replace(/ Copyright.*/, '')}; ` +
      `load average ${loadBefore[0]?.toFixed(2)} before, ${loadAfter[0]?.toFixed(2)} after; took ${minutes} min.`,
    `Files on ${filesystemOf(opts.dir)} (${opts.dir}); ${formatSize(opts.size)} test file; time-based jobs ${opts.runtime} s after a ` +
      `${opts.ramp} s ramp; ${opts.runs === 1 ? 'one run' : `median of ${opts.runs} runs`}. The machine is shared and noisy: ` +
      'compare the ratios within this run, not absolute figures across runs. Ratio = column / passthrough ' +
      '(higher is better for MiB/s and IOPS, lower for µs and s); "÷ ext4 …" = the column / the bare file on the same disk, the ' +
      'physical limit. Before each read job and each convert, the files behind a FUSE mount (or the convert source) are read once ' +
      '(in a cluster, all three stores), so every FUSE target starts with them in the page cache; the bare file is not (ext4 buffered: ' +
      'fio drops its cache first). "CPU µs/req": utime + stime of the target\'s daemons (all threads; summed over a cluster\'s three) ' +
      'from /proc/PID/stat over fio\'s measured time, per request fio counted (reads + writes; in the fdatasync row per write + ' +
      'fdatasync pair); fio\'s own CPU and the kernel\'s work charged to fio are not in it (bench/cpu.ts). ' +
      'Targets: the one-host figures against the one-host targets (issue 10), the three-node ones against the three-copy targets ' +
      '(shared/notes/performance.md).',
    ...targets.flatMap(t => [`- ${t.name}: ${t.description}`, ...(t.notes?.() ?? []).map(n => `  - **${n}**`)]),
    ''
  ].join('\n')
  const failures = results.failures()
  const cow = cowTable(results)
  const writes = writesTable(results, { size: formatSize(opts.size), overwrite: formatSize(Math.min(OVERWRITE_BYTES, opts.size)) })
  const text = [
    header,
    clusters.length === 0 ? '' : '## One host\n',
    resultsTable(results, oneHost.map(t => t.name)),
    clusters.length === 0 ? '' : '## Three nodes, three copies\n\n' + resultsTable(results, clusters.map(t => t.name)),
    floorSection(results, opts.runs),
    writes === ''
      ? ''
      : 'Bytes written to the stores per byte the guest wrote (bench/writes.ts; ' +
        `${opts.runs > 1 ? `medians over the ${opts.runs} runs; ` : ''}the guest's bytes are fio's io_bytes). "write_bytes" is ` +
        'write_bytes − cancelled_write_bytes of /proc/<pid>/io summed over the target\'s daemons, taken before the job and once ' +
        'they have been quiet for 1 s after it: everything they wrote (object data, copies received from the other nodes, index, ' +
        'logs), per daemon in brackets. "Allocated" is the growth of du over the data folders (the stores\' `objects` folders, ' +
        'the passthrough\'s backing folder). The floor is the copies kept.\n\n' + writes,
    rssLines(results, formatSize(opts.rssSize)),
    cow === ''
      ? ''
      : `Copy-on-write, on ${results.cowTargets.map(t => t.name).join(', ')} only (absolute targets, not ratios; see bench/cow.ts for how each is taken` +
        `${opts.runs > 1 ? `; medians over the ${opts.runs} runs` : ''}):\n\n` + cow,
    failures.length > 0 ? 'Failures:\n' + failures.map(f => `- ${f.replace(/\n/g, '\n  ')}`).join('\n') + '\n' : ''
  ].filter(Boolean).join('\n')
  process.stdout.write('\n' + text)
  const out = path.join(root, 'bench', 'results')
  fs.mkdirSync(out, { recursive: true })
  fs.writeFileSync(path.join(out, 'latest.md'), text)
  fs.writeFileSync(path.join(out, 'latest.json'), JSON.stringify({ options: { ...opts, only: opts.only && [...opts.only] }, tools, results }, null, 2) + '\n')
  say(`\nbench: wrote ${path.relative(process.cwd(), path.join(out, 'latest.md')) || path.join(out, 'latest.md')}`)
  return failures.length > 0 ? 1 : 0
}

/**
 * Stops the targets (last first), keeps the daemons' logs in bench/results/logs/ when keepLogs()
 * says so (a run with failures), then stops whatever else is registered and removes the temporary folder.
 */
async function stopAll (targets: Target[], root: string, keepLogs: () => boolean): Promise<void> {
  for (const t of [...targets].reverse()) {
    try {
      await t.teardown()
    } catch (err) {
      say(`bench: stopping ${t.name}: ${(err as Error).message}`)
    }
  }
  const logs = path.join(root, 'bench', 'results', 'logs')
  // Logs of an earlier run would pass for this one's.
  fs.rmSync(logs, { recursive: true, force: true })
  if (keepLogs()) {
    for (const t of targets) {
      for (const file of t.logFiles?.() ?? []) {
        if (!fs.existsSync(file)) continue
        const dest = path.join(logs, t.name.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, ''), `${path.basename(path.dirname(file))}.log`)
        fs.mkdirSync(path.dirname(dest), { recursive: true })
        fs.copyFileSync(file, dest)
        say(`bench: kept ${path.relative(process.cwd(), dest)}`)
      }
    }
  }
  for (const w of await cleanup.cleanupAll()) say(`bench: ${w}`)
}

process.on('exit', () => cleanup.cleanupSync())

main().then(code => {
  process.exitCode = code
}, err => {
  say(`bench: ${(err as Error)?.stack ?? String(err)}`)
  process.exitCode = 1
})
