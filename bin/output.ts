// Tables and progress bars for people; --json output bypasses both.

export function table (header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd() + '\n'
  return line(header) + rows.map(line).join('')
}

/** A one-line bar on a terminal's stderr; silent when stderr is not a terminal. */
export function progressBar (label: string): { update: (done: number, total: number) => void, done: () => void } {
  const tty = process.stderr.isTTY === true
  let drawn = false
  return {
    update (done, total) {
      if (!tty || total <= 0) return
      const width = 30
      const filled = Math.round(width * done / total)
      process.stderr.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}`)
      drawn = true
    },
    done () {
      if (drawn) process.stderr.write('\n')
    }
  }
}
