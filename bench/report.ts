// The results: samples per (row, target), medians, ratios against the baseline, the Markdown table.

import type { FloorResult } from './floor'
import { type CowRow, type CowRowId, type CowSectionId, FLOOR_IDS, type FloorId, formatGoal, meets, type Row, type RowId, ROWS, THREE_COPIES_GOALS } from './rows'
import type { RssReport } from './rss'
import type { WriteKind, WriteSample } from './writes'

/** The error of a cell not measured because its target had failed before. */
export const SKIPPED = 'skipped: the target had failed earlier'

export interface TargetInfo {
  name: string
  description: string
  goals: Partial<Record<RowId, { op: '>=' | '<=', value: number }>>
  /** Copies it keeps of each guest byte: the floor of its store writes per guest byte. */
  copies: number
  /** 'fuse' targets have daemons, and a CPU-per-request column; 'plain' ones (ext4.ts) do not. */
  kind: 'fuse' | 'plain'
  /** Physical-limit targets (by name) this one's value is also divided by, a column each. */
  limits: string[]
}

export interface Cell {
  samples: number[]
  errors: string[]
}

export interface RssResult extends RssReport {
  /** How fast the image was written while sampling, MiB/s. */
  mibps: number
  /** Names of the processes of perPid, in its order. */
  labels: string[]
}

export class Results {
  readonly rows: Row[]
  /** The first is the baseline. */
  readonly targets: TargetInfo[]
  private readonly cells = new Map<string, Cell>()
  /** The run with the highest peak, per target. */
  readonly rss = new Map<string, RssResult>()
  readonly rssErrors = new Map<string, string[]>()
  /** The copy-on-write table: its rows, and the targets it runs on (those with snapshots). */
  readonly cowRows: CowRow[]
  readonly cowTargets: TargetInfo[]
  /** Errors of a copy-on-write section, by section and target. */
  private readonly cowErrorLists = new Map<string, string[]>()
  /** The last run's detail line of each section, by target. */
  readonly cowDetails = new Map<string, Map<CowSectionId, string>>()
  /** Store writes per guest byte: every sample, by target. */
  readonly writes = new Map<string, WriteSample[]>()
  readonly writeErrors = new Map<string, string[]>()
  /** Names of each target's processes (for the per-process figures). */
  readonly pidLabels = new Map<string, string[]>()
  /** Targets that did not start, and why. */
  readonly setupErrors = new Map<string, string>()
  /** The transport floor (floor.ts): one measurement per run, and why any failed. */
  readonly floor: FloorResult[] = []
  readonly floorErrors: string[] = []

  constructor (rows: Row[], targets: TargetInfo[], cowRows: CowRow[] = [], cowTargets: TargetInfo[] = []) {
    this.rows = rows
    this.targets = targets
    this.cowRows = cowRows
    this.cowTargets = cowTargets
  }

  cell (row: RowId | `cow:${CowRowId}` | `cpu:${RowId}`, target: string): Cell {
    const key = `${row}\0${target}`
    let c = this.cells.get(key)
    if (c === undefined) {
      c = { samples: [], errors: [] }
      this.cells.set(key, c)
    }
    return c
  }

  /** µs of the target's daemons' CPU per request of a fio row (cpu.ts), one sample per run. */
  cpuCell (row: RowId, target: string): Cell {
    return this.cell(`cpu:${row}`, target)
  }

  cpuMedian (row: RowId, target: string): number | null {
    return median(this.cpuCell(row, target).samples)
  }

  cowCell (row: CowRowId, target: string): Cell {
    return this.cell(`cow:${row}`, target)
  }

  cowMedian (row: CowRowId, target: string): number | null {
    return median(this.cowCell(row, target).samples)
  }

  cowErrors (section: CowSectionId, target: string): string[] {
    const key = `${section}\0${target}`
    let list = this.cowErrorLists.get(key)
    if (list === undefined) {
      list = []
      this.cowErrorLists.set(key, list)
    }
    return list
  }

  cowSections (): CowSectionId[] {
    return [...new Set(this.cowRows.map(r => r.section))]
  }

  addWrites (target: string, sample: WriteSample): void {
    const list = this.writes.get(target) ?? []
    list.push(sample)
    this.writes.set(target, list)
  }

  addWriteError (target: string, message: string): void {
    const list = this.writeErrors.get(target) ?? []
    list.push(message)
    this.writeErrors.set(target, list)
  }

  addRss (target: string, r: RssResult): void {
    const old = this.rss.get(target)
    if (old === undefined || r.peakMiB > old.peakMiB) this.rss.set(target, r)
  }

  median (row: RowId, target: string): number | null {
    return median(this.cell(row, target).samples)
  }

  /** A floor figure over the runs: the median of their means (or of their medians). */
  floorMedian (id: FloorId, stat: 'meanUs' | 'medianUs'): number | null {
    return median(this.floor.map(r => r[id][stat]))
  }

  failures (): string[] {
    const out: string[] = []
    for (const t of this.targets) {
      const setup = this.setupErrors.get(t.name)
      if (setup !== undefined) out.push(`starting ${t.name}: ${setup}`)
      let skipped = 0
      for (const row of this.rows) {
        for (const e of this.cell(row.id, t.name).errors) {
          if (e === SKIPPED) skipped++
          else out.push(`${row.id} on ${t.name}: ${e}`)
        }
        for (const e of this.cpuCell(row.id, t.name).errors) out.push(`CPU per request of ${row.id} on ${t.name}: ${e}`)
      }
      if (this.cowTargets.some(c => c.name === t.name)) {
        for (const section of this.cowSections()) {
          for (const e of this.cowErrors(section, t.name)) {
            if (e === SKIPPED) skipped++
            else out.push(`${section} on ${t.name}: ${e}`)
          }
        }
      }
      if (skipped > 0) out.push(`${skipped} ${setup === undefined ? 'later ' : ''}measurement${skipped === 1 ? '' : 's'} on ${t.name} skipped after that`)
    }
    for (const [t, errors] of this.rssErrors) for (const e of errors) out.push(`memory on ${t}: ${e}`)
    for (const [t, errors] of this.writeErrors) for (const e of errors) out.push(`store writes on ${t}: ${e}`)
    for (const e of this.floorErrors) out.push(`transport floor: ${e}`)
    return out
  }

  toJSON (): unknown {
    return {
      targets: this.targets,
      rows: this.rows.map(row => ({
        ...row,
        cells: Object.fromEntries(this.targets.map(t => [t.name, { ...this.cell(row.id, t.name), median: this.median(row.id, t.name) }])),
        cpuUsPerRequest: Object.fromEntries(this.targets.filter(t => t.kind === 'fuse')
          .map(t => [t.name, { ...this.cpuCell(row.id, t.name), median: this.cpuMedian(row.id, t.name) }]))
      })),
      rss: Object.fromEntries(this.rss),
      writes: Object.fromEntries([...this.writes].map(([t, samples]) => [t, { pids: this.pidLabels.get(t) ?? [], samples }])),
      floor: {
        runs: this.floor,
        errors: this.floorErrors,
        medians: Object.fromEntries(FLOOR_IDS.map(id => [id, { meanUs: this.floorMedian(id, 'meanUs'), medianUs: this.floorMedian(id, 'medianUs') }]))
      },
      cow: {
        targets: this.cowTargets.map(t => t.name),
        rows: this.cowRows.map(row => ({
          ...row,
          cells: Object.fromEntries(this.cowTargets.map(t => [t.name, { ...this.cowCell(row.id, t.name), median: this.cowMedian(row.id, t.name) }]))
        })),
        errors: Object.fromEntries(this.cowTargets.map(t => [t.name, Object.fromEntries(this.cowSections().map(s => [s, this.cowErrors(s, t.name)]))])),
        details: Object.fromEntries([...this.cowDetails].map(([t, m]) => [t, Object.fromEntries(m)]))
      }
    }
  }
}

export function median (xs: number[]): number | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid] as number : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

function formatValue (v: number | null, row: Row): string {
  if (v === null) return 'failed'
  switch (row.unit) {
    case 's': return v.toFixed(2)
    case 'MiB/s': return v >= 100 ? String(Math.round(v)) : v.toFixed(1)
    default: return String(Math.round(v))
  }
}

function formatRatio (r: number, row: Row): string {
  return row.better === 'lower' ? `${r.toFixed(2)}×` : r.toFixed(2)
}

/** Pads the columns of a Markdown table so it also reads well in a terminal. */
export function markdownTable (header: string[], rows: string[][], rightAligned: boolean[]): string {
  const widths = header.map((h, i) => Math.max([...h].length, ...rows.map(r => [...(r[i] ?? '')].length)))
  const pad = (s: string, i: number): string => {
    const gap = ' '.repeat((widths[i] ?? 0) - [...s].length)
    return rightAligned[i] === true ? gap + s : s + gap
  }
  const line = (cells: string[]): string => '| ' + cells.map(pad).join(' | ') + ' |'
  const rule = '|' + widths.map((w, i) => rightAligned[i] === true ? '-'.repeat(w + 1) + ':' : '-'.repeat(w + 2)).join('|') + '|'
  return [line(header), rule, ...rows.map(line)].join('\n') + '\n'
}

function formatCpu (v: number | null): string {
  if (v === null) return '—'
  return v >= 10 ? String(Math.round(v)) : v.toFixed(1)
}

/**
 * The table: a row per measurement. The baseline first; then per other target its value, its
 * daemons' CPU per request (FUSE targets), the ratio to the baseline, target and verdict (when it
 * has targets), and its ratio to each physical limit it names. `names` picks the targets after the
 * baseline (all of them by default), so that one run can print a one-host and a three-node table.
 */
export function resultsTable (results: Results, names?: string[]): string {
  const [baseline, ...rest] = results.targets
  if (baseline === undefined) return ''
  const others = names === undefined ? rest : rest.filter(t => names.includes(t.name))
  const cpu = (t: TargetInfo): boolean => t.kind === 'fuse'
  const hasGoals = (t: TargetInfo): boolean => Object.keys(t.goals).length > 0
  const header = ['job', baseline.name]
  const right = [false, true]
  if (cpu(baseline)) { header.push('CPU µs/req'); right.push(true) }
  for (const t of others) {
    header.push(t.name)
    right.push(true)
    if (cpu(t)) { header.push('CPU µs/req'); right.push(true) }
    header.push('ratio')
    right.push(true)
    if (hasGoals(t)) { header.push('target', 'met'); right.push(false, false) }
    for (const l of t.limits) { header.push(`÷ ${l}`); right.push(true) }
  }
  const ratioOf = (v: number | null, base: number | null): number | null => v !== null && base !== null && base > 0 ? v / base : null
  const body: string[][] = []
  for (const row of results.rows) {
    const base = results.median(row.id, baseline.name)
    const line = [row.label, formatValue(base, row)]
    if (cpu(baseline)) line.push(formatCpu(results.cpuMedian(row.id, baseline.name)))
    for (const t of others) {
      const v = results.median(row.id, t.name)
      const goal = t.goals[row.id]
      const ratio = ratioOf(v, base)
      line.push(formatValue(v, row))
      if (cpu(t)) line.push(formatCpu(results.cpuMedian(row.id, t.name)))
      line.push(ratio === null ? '—' : formatRatio(ratio, row))
      if (hasGoals(t)) {
        line.push(goal === undefined ? '' : formatGoal(goal, row),
          goal === undefined ? '' : ratio === null ? 'n/a' : meets(goal, ratio) ? 'yes' : '**no**')
      }
      for (const l of t.limits) {
        const r = ratioOf(v, results.median(row.id, l))
        line.push(r === null ? '—' : formatRatio(r, row))
      }
    }
    body.push(line)
  }
  return markdownTable(header, body, right)
}

export function rssLines (results: Results, sizeText: string): string {
  const [baseline, ...others] = results.targets
  const lines: string[] = []
  for (const t of [...others, ...(baseline ? [baseline] : [])]) {
    const r = results.rss.get(t.name)
    if (r === undefined) {
      if (results.rssErrors.has(t.name)) lines.push(`- ${t.name}: failed`)
      continue
    }
    // A cluster's nodes each on their own: their peaks need not fall on one sample.
    const each = r.perPid.length > 1
      ? '; each: ' + r.perPid.map((p, i) => `${r.labels[i] ?? `process ${i + 1}`} **${Math.round(p.peakMiB)} MiB** (VmHWM ${Math.round(p.hwmMiB)})`).join(', ')
      : ''
    lines.push(`- ${t.name}: **${Math.round(r.peakMiB)} MiB** peak${r.perPid.length > 1 ? ` over its ${r.perPid.length} daemons together` : ''} ` +
      `(${Math.round(r.startMiB)} MiB before the write; VmHWM since start ${Math.round(r.hwmMiB)} MiB; written at ${Math.round(r.mibps)} MiB/s; ` +
      `${r.samples} samples)${each}`)
  }
  if (lines.length === 0) return ''
  return `Peak RSS (VmRSS every 100 ms, summed over the target's daemons, and per daemon) while a ${sizeText} image is written ` +
    'sequentially (fio, 1M O_DIRECT, through the one mount):\n' + lines.join('\n') + '\n'
}

const WRITE_ROWS: Array<{ kind: WriteKind, measure: 'written' | 'allocated', label: string }> = [
  { kind: 'first-write', measure: 'written', label: 'first write of the {size} test file: the daemons\' write_bytes' },
  { kind: 'first-write', measure: 'allocated', label: '… growth of the allocated bytes of the data folders' },
  { kind: 'overwrite', measure: 'written', label: 'overwrite of its first {overwrite}: the daemons\' write_bytes' }
]

function writeRatio (s: WriteSample, measure: 'written' | 'allocated'): number | null {
  if (measure === 'allocated') return s.allocatedGrowth === null ? null : s.allocatedGrowth / s.guestBytes
  return s.perPid.reduce((a, b) => a + b, 0) / s.guestBytes
}

/**
 * Bytes written to the stores per byte the guest wrote (writes.ts): a row per job and way of
 * counting, per target the median over the runs, each daemon's share beside it when there are several.
 */
export function writesTable (results: Results, sizes: { size: string, overwrite: string }): string {
  const shown = results.targets.filter(t => results.writes.has(t.name) || results.writeErrors.has(t.name))
  if (shown.length === 0) return ''
  const header = ['bytes written to the stores per guest byte (seq 1M O_DIRECT)', ...shown.map(t => t.name)]
  const right = [false, ...shown.map(() => true)]
  const body: string[][] = []
  for (const row of WRITE_ROWS) {
    const line = [row.label.replace('{size}', sizes.size).replace('{overwrite}', sizes.overwrite)]
    let any = false
    for (const t of shown) {
      const samples = (results.writes.get(t.name) ?? []).filter(s => s.kind === row.kind)
      const ratios = samples.map(s => writeRatio(s, row.measure)).filter((r): r is number => r !== null)
      const m = median(ratios)
      if (m === null) {
        line.push(results.writeErrors.has(t.name) ? 'failed' : '—')
        continue
      }
      any = true
      // The share of each daemon, from the run closest to the median.
      const mid = samples.reduce((best, s) => Math.abs((writeRatio(s, row.measure) ?? 0) - m) < Math.abs((writeRatio(best, row.measure) ?? 0) - m) ? s : best)
      const each = row.measure === 'written' && mid.perPid.length > 1 ? ` (${mid.perPid.map(n => (n / mid.guestBytes).toFixed(2)).join(' + ')})` : ''
      line.push(`${m.toFixed(2)}${each}`)
    }
    if (any || row.kind === 'first-write') body.push(line)
  }
  body.push(['floor: copies kept of each guest byte', ...shown.map(t => t.copies.toFixed(1))])
  return markdownTable(header, body, right)
}

function formatCowValue (v: number, row: CowRow): string {
  switch (row.unit) {
    case 'ms': return v.toFixed(1)
    case 'ratio': return v.toFixed(2)
    default: return String(Math.round(v))
  }
}

function formatCowGoal (row: CowRow): string {
  if (row.goal === undefined) return ''
  const unit = row.unit === 'ms' || row.unit === 'KiB' ? ` ${row.unit}` : ''
  return `${row.goal.op === '<=' ? '≤' : '≥'} ${row.goal.value}${unit}`
}

/**
 * The copy-on-write table: a row per measurement, per target its value (the median of its
 * samples), target and verdict. A section that failed shows "failed" in each row it has no value for.
 */
export function cowTable (results: Results): string {
  if (results.cowTargets.length === 0 || results.cowRows.length === 0) return ''
  const header = ['copy-on-write']
  const right = [false]
  for (const t of results.cowTargets) {
    header.push(t.name, 'target', 'met')
    right.push(true, false, false)
  }
  const body: string[][] = []
  for (const row of results.cowRows) {
    const line = [row.label]
    for (const t of results.cowTargets) {
      const v = results.cowMedian(row.id, t.name)
      line.push(v === null ? 'failed' : formatCowValue(v, row), formatCowGoal(row),
        row.goal === undefined ? '' : v === null ? 'n/a' : meets(row.goal, v) ? 'yes' : '**no**')
    }
    body.push(line)
  }
  const notes: string[] = []
  for (const t of results.cowTargets) {
    for (const [section, detail] of results.cowDetails.get(t.name) ?? []) notes.push(`- ${t.name}, ${section}: ${detail}`)
  }
  return markdownTable(header, body, right) + (notes.length > 0 ? '\n' + notes.join('\n') + '\n' : '')
}

const FLOOR_LABELS: Record<FloorId, string> = {
  rtt2_1m: 'a 1 MiB Write to both (what each 1 MiB FUSE request of a three-copy write adds)',
  rtt2_128k: 'a 128 KiB Write to both (libfuse 2\'s largest request)',
  rtt2_4k: 'a 4 KiB Write to both (a 4 KiB write)',
  rtt2_small: 'an empty Write to both (a sync, beyond its fdatasync)',
  plain_1m: 'a 1 MiB Write to both, plain-authenticated frames (--wire plain-authenticated)',
  plain_4k: 'a 4 KiB Write to both, plain-authenticated frames',
  raw_1m: '1 MiB to both over raw TCP (a length in front, a 4-byte answer: the limit)',
  raw_4k: '4 KiB to both over raw TCP',
  raw_small: 'nothing but the length to both over raw TCP'
}

interface FloorRow {
  row: RowId
  /** The baseline's time per FUSE request, µs, from its figure in the row's unit. */
  perRequest: (value: number) => number
  /** The round trips to both remote replicas that a three-copy write adds to each request. */
  adds: FloorId[]
}

const FLOOR_ROWS: FloorRow[] = [
  // The kernel-protocol frontend takes a 1 MiB O_DIRECT write as one request.
  { row: 'seq-write', perRequest: mibps => 2 ** 20 / (mibps * 2 ** 20 / 1e6), adds: ['rtt2_1m'] },
  { row: 'randwrite-qd1', perRequest: iops => 1e6 / iops, adds: ['rtt2_4k'] },
  { row: 'fdatasync', perRequest: us => us, adds: ['rtt2_4k', 'rtt2_small'] }
]

/** The floor's figure over the runs as the ceilings use it: the mean (fio's figures are means too). */
function floorMean (results: Results, id: FloorId): number {
  return results.floorMedian(id, 'meanUs') ?? NaN
}

/** One row of the floor's table: the baseline's figure and time per request, what the transport adds, the best ratio. */
function floorLine (results: Results, f: FloorRow): string[] {
  const row = ROWS.find(r => r.id === f.row) as Row
  const baseline = results.targets[0]
  const ran = results.rows.some(r => r.id === f.row)
  const base = ran && baseline !== undefined ? results.median(f.row, baseline.name) : null
  const added = f.adds.reduce((sum, id) => sum + floorMean(results, id), 0)
  const goal = THREE_COPIES_GOALS[f.row]
  const line = [row.label, ran ? formatValue(base, row) : 'not run']
  if (base === null || base <= 0) line.push('—', `${Math.round(added)} (${f.adds.join(' + ')})`, '—')
  else {
    const own = f.perRequest(base)
    const best = row.better === 'higher' ? own / (own + added) : (own + added) / own
    line.push(String(Math.round(own)), `${Math.round(added)} (${f.adds.join(' + ')})`, formatRatio(best, row))
    if (goal !== undefined) return [...line, formatGoal(goal, row), meets(goal, best) ? 'yes' : '**no**']
  }
  return [...line, goal === undefined ? '' : formatGoal(goal, row), '']
}

/**
 * The transport floor (floor.ts) and, for the write rows it bounds, the best ratio a three-copy
 * write could reach against this run's passthrough if it cost nothing but the round trips.
 */
export function floorSection (results: Results, runs: number): string {
  if (results.floor.length === 0 && results.floorErrors.length === 0) return ''
  const intro = `Transport floor of a three-copy write (bench/floor.ts${runs > 1 ? `; medians over the ${runs} runs` : ''}): two child Node ` +
    'processes on 127.0.0.1 play the remote replicas, each reached over TCP (no Nagle) through the Noise handshake, frames, Link and codecs ' +
    "Sheep's nodes use, and answer each Write at once without touching a disk. One request at a time goes to both; the next once both have answered. " +
    'The raw figures send the same bytes over plain TCP with nothing but a length in front: what the transport costs is the difference.'
  if (results.floor.length === 0) return intro + ' It failed (see Failures).\n'
  const figures = FLOOR_IDS.map(id => `- \`${id}\`, ${FLOOR_LABELS[id]}: mean **${Math.round(floorMean(results, id))} µs**, ` +
    `median ${Math.round(results.floorMedian(id, 'medianUs') ?? NaN)} µs (${results.floor.reduce((n, r) => n + r[id].requests, 0)} requests)`)
  const table = markdownTable(
    ['job', results.targets[0]?.name ?? 'baseline', 'its time per request, µs', 'transport adds (means), µs', 'best ratio', 'three-copy target', 'reachable'],
    FLOOR_ROWS.map(f => floorLine(results, f)), [false, true, true, true, true, false, false])
  const mean = (id: FloorId): number => floorMean(results, id)
  const goals = [
    `- 4 KiB to both against raw TCP: **${(mean('rtt2_4k') / mean('raw_4k')).toFixed(2)}×** (target ≤ 1.5×); plain-authenticated ${(mean('plain_4k') / mean('raw_4k')).toFixed(2)}×`,
    `- 1 MiB to both, one at a time: **${(2 ** 20 / mean('rtt2_1m') * 1e6 / 2 ** 30).toFixed(2)} GiB/s** (target ≥ 1); plain-authenticated ${(2 ** 20 / mean('plain_1m') * 1e6 / 2 ** 30).toFixed(2)}, raw TCP ${(2 ** 20 / mean('raw_1m') * 1e6 / 2 ** 30).toFixed(2)}`
  ]
  return intro + '\n\n' + figures.join('\n') + '\n\n' + goals.join('\n') + '\n\n' + table + '\n' +
    'Best ratio: the passthrough\'s time per request with the round trips added: t / (t + rtt2_1m) per 1 MiB request of a seq write, ' +
    'L / (L + rtt2_4k) with L = 1 / IOPS for randwrite qd1, (F + rtt2_4k + rtt2_small) / F for write + fdatasync. ' +
    'These assume Sheep costs nothing beyond the transport and the passthrough\'s own work.\n'
}
