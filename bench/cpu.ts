// CPU per request: the time a target's daemons spend on the CPU (utime + stime of /proc/<pid>/stat,
// all their threads) while fio measures, divided by the requests fio counted. With three daemons on
// two cores, this, not the throughput of one of them alone, decides what a host can carry.
//
// The window: fio does not count the I/O of its ramp (it resets its statistics when the ramp
// ends), so for a time-based job the first reading is taken `ramp` seconds after fio was spawned
// and the second once fio has exited. fio's start-up (a few ms: the file exists) shifts the window
// a little later than fio's own, and its exit (closing the file) adds a little at the end; both
// are small against seconds of I/O and alike for every target. A job without a ramp (the first
// write) is read from spawn to exit. The kernel's own CPU (page cache, the FUSE device) is charged
// to whichever process asked, so fio's share of the FUSE round trip is not in these figures.

import { spawnSync } from 'node:child_process'
import fs from 'node:fs'

let ticksPerSecond: number | null = null

/** USER_HZ, the unit of utime and stime (100 on Linux unless configured otherwise). */
function clockTicks (): number {
  if (ticksPerSecond === null) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 })
    const n = Number(r.stdout?.trim())
    ticksPerSecond = r.status === 0 && Number.isInteger(n) && n > 0 ? n : 100
  }
  return ticksPerSecond
}

/** utime + stime of one process (all its threads), in ticks; null when it is gone. */
function processTicks (pid: number): number | null {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return null
  }
  // The command name (field 2) is in parentheses and may hold spaces: count fields after its end.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  // Fields 14 and 15 (utime, stime) of proc(5) are 11 and 12 after the name.
  const utime = Number(fields[11])
  const stime = Number(fields[12])
  return Number.isFinite(utime) && Number.isFinite(stime) ? utime + stime : null
}

/** CPU seconds used so far by all of `pids` together; throws when one is gone (the figure would be wrong). */
export function cpuSeconds (pids: number[]): number {
  let ticks = 0
  for (const pid of pids) {
    const t = processTicks(pid)
    if (t === null) throw new Error(`cannot read /proc/${pid}/stat`)
    ticks += t
  }
  return ticks / clockTicks()
}

/**
 * Measures the CPU of `pids` over one fio job: start() when fio is spawned, stop() as soon as it
 * has exited (before anything else the benchmark does after the job, such as waiting for the
 * daemons' writes to settle), then finish() with fio's request count. With rampSeconds > 0 the
 * first reading waits for the ramp.
 */
export class CpuMeter {
  private readonly pids: number[]
  private readonly rampSeconds: number
  private begin: number | null = null
  private end: number | null = null
  private timer: NodeJS.Timeout | null = null
  private failed: string | null = null

  constructor (pids: number[], rampSeconds: number) {
    this.pids = pids
    this.rampSeconds = rampSeconds
  }

  start (): void {
    const read = (): void => {
      this.timer = null
      try {
        this.begin = cpuSeconds(this.pids)
      } catch (err) {
        this.failed = (err as Error).message
      }
    }
    if (this.rampSeconds > 0) this.timer = setTimeout(read, this.rampSeconds * 1000)
    else read()
  }

  /** Takes the closing reading (once; a failure is kept for finish()). */
  stop (): void {
    if (this.timer !== null) {
      clearTimeout(this.timer)
      this.timer = null
      this.failed ??= 'fio ended before its ramp did'
    }
    if (this.end !== null || this.failed !== null) return
    try {
      this.end = cpuSeconds(this.pids)
    } catch (err) {
      this.failed = (err as Error).message
    }
  }

  /** µs of daemon CPU per request between start() and stop(); throws when a reading is missing. */
  finish (requests: number): number {
    this.stop()
    if (this.failed !== null) throw new Error(this.failed)
    if (this.begin === null || this.end === null) throw new Error('no CPU reading at the start')
    if (requests <= 0) throw new Error('fio counted no requests')
    return (this.end - this.begin) * 1e6 / requests
  }

  /** For a job that failed: no reading is left pending. */
  cancel (): void {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
  }
}
