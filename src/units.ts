// Human sizes for the command line and reports: "20G" = 20 GiB, as qemu-img reads them.

const UNITS: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 }

/** Parses "512", "64K", "20G", "1.5T" (binary units, optional "iB"/"B" suffix); null if malformed. */
export function parseSize (text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?$/i.exec(text.trim())
  if (!m) return null
  const bytes = Number(m[1]) * (UNITS[(m[2] ?? '').toUpperCase()] ?? NaN)
  if (!Number.isSafeInteger(bytes)) return null
  return bytes
}

export function formatSize (bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let v = bytes
  let i = -1
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  let shown = v >= 100 ? Math.round(v) : Number(v.toFixed(1))
  // 1048575 bytes is "1 MiB", not "1024 KiB".
  if (shown >= 1024 && i < units.length - 1) { shown = 1; i++ }
  return `${shown} ${units[i]}`
}
