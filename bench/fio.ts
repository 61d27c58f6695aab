// The fio jobs behind the table's rows, and running fio with JSON output.

import os from 'node:os'
import { runTool } from './proc'
import type { RowId } from './rows'

const MiB = 2 ** 20

interface FioLatency { mean: number, N?: number }
interface FioDirection { io_bytes: number, bw_bytes: number, iops: number, total_ios: number, lat_ns: FioLatency }
export interface FioJobResult {
  jobname: string
  error: number
  read: FioDirection
  write: FioDirection
  sync?: { total_ios: number, lat_ns: FioLatency }
}

export interface FioTiming {
  /** Seconds each time-based job measures for. */
  runtime: number
  /** Seconds each time-based job runs before it starts measuring. */
  ramp: number
}

export interface FioJob {
  row: RowId
  /** fio options on top of the common ones. */
  options: string[]
  /** Runs for --runtime over the whole file; otherwise writes the file once from start to end. */
  timeBased: boolean
  /** Reads: the target's files on the local disk are read first, so both targets start with them in the page cache. */
  warm: boolean
  value: (job: FioJobResult) => number
}

const bandwidth = (dir: 'read' | 'write') => (j: FioJobResult): number => j[dir].bw_bytes / MiB
const iops = (dir: 'read' | 'write') => (j: FioJobResult): number => j[dir].iops

/**
 * Mean time of one write plus the fdatasync after it, as fio reports them (lat = submission +
 * completion). fio 3.33 counts fdatasync calls in sync.lat_ns.N only (its sync.total_ios stays 0,
 * unlike with fsync=1), so N is what shows that they happened.
 */
function writePlusSync (j: FioJobResult): number {
  const syncs = Math.max(j.sync?.total_ios ?? 0, j.sync?.lat_ns.N ?? 0)
  if (j.sync === undefined || syncs === 0) throw new Error('fio reported no fdatasync calls')
  return (j.write.lat_ns.mean + j.sync.lat_ns.mean) / 1000
}

/** Reads and writes fio counted in its measured time (after the ramp): what CPU per request divides by. */
export function requestsOf (j: FioJobResult): number {
  return j.read.total_ios + j.write.total_ios
}

const SEQ = ['--bs=1M', '--direct=1', '--ioengine=psync', '--iodepth=1']
const RAND_QD1 = ['--bs=4k', '--direct=1', '--ioengine=psync', '--iodepth=1']
const RAND_QD16 = ['--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=16', '--iodepth_batch_submit=1', '--iodepth_batch_complete_min=1']
const RAND_16T = ['--bs=4k', '--direct=1', '--ioengine=psync', '--iodepth=1', '--numjobs=16']

/** In table order, except qemu-img convert, which is not a fio job. */
export const FIO_JOBS: FioJob[] = [
  // The file must not exist yet: this creates it, so later reads find real data.
  { row: 'first-write', options: ['--rw=write', ...SEQ], timeBased: false, warm: false, value: bandwidth('write') },
  { row: 'seq-write', options: ['--rw=write', ...SEQ], timeBased: true, warm: false, value: bandwidth('write') },
  { row: 'seq-read', options: ['--rw=read', ...SEQ], timeBased: true, warm: true, value: bandwidth('read') },
  { row: 'randwrite-qd1', options: ['--rw=randwrite', ...RAND_QD1], timeBased: true, warm: false, value: iops('write') },
  { row: 'randwrite-qd16', options: ['--rw=randwrite', ...RAND_QD16], timeBased: true, warm: false, value: iops('write') },
  { row: 'randwrite-16t', options: ['--rw=randwrite', ...RAND_16T], timeBased: true, warm: false, value: iops('write') },
  { row: 'randread-qd1', options: ['--rw=randread', ...RAND_QD1], timeBased: true, warm: true, value: iops('read') },
  { row: 'randread-qd16', options: ['--rw=randread', ...RAND_QD16], timeBased: true, warm: true, value: iops('read') },
  { row: 'randread-16t', options: ['--rw=randread', ...RAND_16T], timeBased: true, warm: true, value: iops('read') },
  // Buffered writes, each followed by fdatasync(2), as a guest's journal commit does (and as
  // issue 10's target is stated; this row was write + fsync until the kernel frontend).
  { row: 'fdatasync', options: ['--rw=write', '--bs=4k', '--ioengine=psync', '--fdatasync=1'], timeBased: true, warm: false, value: writePlusSync }
]

/** Sequential 1 MiB O_DIRECT writes of a new file of `size` bytes (for the memory measurement). */
export const FILL_OPTIONS = ['--rw=write', ...SEQ]

/**
 * Runs one fio job on `file` (`size` bytes) and returns its result. Threads rather than processes
 * (--thread), so that stopping fio's one PID stops all its I/O. onSpawn runs as soon as fio is
 * started (CPU accounting starts its clock there).
 */
export async function runFio (name: string, file: string, size: number, options: string[], timing: FioTiming | null,
  onSpawn?: () => void): Promise<FioJobResult> {
  const args = [
    `--name=${name}`, `--filename=${file}`, `--size=${size}`,
    '--thread', '--output-format=json', '--fallocate=none', '--norandommap', '--group_reporting',
    ...options
  ]
  if (timing !== null) args.push('--time_based', `--runtime=${timing.runtime}`, `--ramp_time=${timing.ramp}`)
  // Time-based jobs end by themselves; a file is written at 2 MiB/s or better, or something is wrong.
  const timeoutMs = timing !== null ? (timing.runtime + timing.ramp + 120) * 1000 : Math.max(600, size / (2 * MiB)) * 1000
  const r = await runTool('fio', args, { timeoutMs, onSpawn })
  let job: FioJobResult | undefined
  let parseError = ''
  try {
    const json = r.stdout.slice(r.stdout.indexOf('{'), r.stdout.lastIndexOf('}') + 1)
    job = (JSON.parse(json) as { jobs: FioJobResult[] }).jobs[0]
  } catch (err) {
    parseError = (err as Error).message
  }
  // fio's own complaints are the lines of its stderr (or of the text before its JSON) starting "fio:".
  const said = (r.stderr + '\n' + r.stdout.slice(0, Math.max(0, r.stdout.indexOf('{'))))
    .split('\n').map(l => l.trim()).filter(l => l !== '')
  const why = said.filter(l => /^fio:|error/i.test(l)).slice(-3).join(' | ') || said.slice(-3).join(' | ')
  if (job !== undefined && job.error !== 0) throw new Error(`fio ${name}: I/O failed with ${errnoName(job.error)}${why ? `: ${why}` : ''}`)
  if (r.code !== 0) throw new Error(`fio ${name} failed (exit ${r.code ?? r.signal})${why ? `: ${why}` : ''}`)
  if (job === undefined) throw new Error(`fio ${name}: cannot read its JSON output${parseError ? ` (${parseError})` : ''}${why ? `: ${why}` : ''}`)
  if (job.read.io_bytes + job.write.io_bytes === 0) throw new Error(`fio ${name} did no I/O${why ? `: ${why}` : ''}`)
  return job
}

function errnoName (errno: number): string {
  const name = Object.entries(os.constants.errno).find(([, n]) => n === errno)?.[0]
  return name === undefined ? `error ${errno}` : `${name} (${errno})`
}
