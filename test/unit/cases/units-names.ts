// Human sizes (src/units.ts) and image names (src/cow/names.ts).

import t from 'tap'
import { formatSize, parseSize } from '../../../src/units'
import { MAX_NAME_BYTES, validateImageName } from '../../../src/cow/names'
import { SheepError } from '../../../src/errors'

const K = 2 ** 10
const M = 2 ** 20
const G = 2 ** 30
const T = 2 ** 40
const P = 2 ** 50

t.test('parseSize accepts plain bytes and binary units', async t => {
  const ok: Array<[string, number]> = [
    ['0', 0], ['1', 1], ['512', 512], ['4096', 4096],
    ['1B', 1], ['1b', 1], ['512 B', 512],
    ['64K', 64 * K], ['64k', 64 * K], ['64KB', 64 * K], ['64KiB', 64 * K], ['64kib', 64 * K], ['64 K', 64 * K], ['64 KiB', 64 * K],
    ['4M', 4 * M], ['4MiB', 4 * M], ['4mb', 4 * M],
    ['20G', 20 * G], ['20GiB', 20 * G], ['20g', 20 * G],
    ['1T', T], ['1.5T', 1.5 * T], ['64T', 64 * T],
    ['1P', P], ['7P', 7 * P],
    ['1.5K', 1536], ['0.5M', M / 2], ['2.25G', 2.25 * G],
    ['  20G  ', 20 * G], ['\t1K\n', K],
    ['007', 7]
  ]
  for (const [text, bytes] of ok) t.equal(parseSize(text), bytes, JSON.stringify(text))
})

t.test('parseSize returns null for anything malformed', async t => {
  const bad = [
    '', ' ', 'G', 'K', 'iB', 'abc', '-1', '-1G', '+1G', '1e3', '1E3', '0x10', '1X', '1KK', '1 G B',
    '1.', '.5', '1..5', '1,5G', '1_000', '10 20', '1Gi', '1GiBs', 'Infinity', 'NaN',
    '1.3', // fractional bytes
    '0.1K', // 102.4 bytes
    '8P', // 2^53: not a safe integer
    '99999999999999999999', // past 2^53
    '1' + '0'.repeat(400) // Infinity
  ]
  for (const text of bad) t.equal(parseSize(text), null, JSON.stringify(text))
})

t.test('formatSize', async t => {
  const cases: Array<[number, string]> = [
    [0, '0 B'], [1, '1 B'], [1023, '1023 B'],
    [K, '1 KiB'], [1536, '1.5 KiB'], [10 * K, '10 KiB'], [99.94 * K, '99.9 KiB'], [100 * K, '100 KiB'], [1000 * K, '1000 KiB'],
    [M, '1 MiB'], [4 * M, '4 MiB'], [1.25 * M, '1.3 MiB'],
    [G, '1 GiB'], [20 * G, '20 GiB'], [T, '1 TiB'], [64 * T, '64 TiB'],
    [P, '1 PiB'], [2048 * P, '2048 PiB']
  ]
  for (const [bytes, text] of cases) t.equal(formatSize(bytes), text, `${bytes}`)
})

t.test('formatSize output parses back to the same size for whole units', async t => {
  for (const n of [1, 2, 3, 17, 100, 512, 1000]) {
    for (const unit of [K, M, G, T]) {
      const bytes = n * unit
      const text = formatSize(bytes).replace(' ', '')
      t.equal(parseSize(text), bytes, `${bytes} -> ${text}`)
    }
  }
})

t.test('formatSize never shows 1024 of a unit when the next unit exists', async t => {
  // Rounding must not carry a value to "1024 KiB" instead of "1 MiB".
  const shown = [M - 1, M - 100, G - 1, T - 1, P - 2 ** 20].map(bytes => `${bytes} -> ${formatSize(bytes)}`)
  t.same(shown.filter(s => /\b1024 [KMGT]iB$/.test(s)), [], 'no size is shown as 1024 of a unit')
})

t.test('validateImageName accepts ordinary names', async t => {
  const good = ['vm1.img', 'a', 'disk.raw', '.hidden', '...', '..a', 'a.', 'a b', 'ünïcödé.img', '日本語', '-dash', 'x'.repeat(MAX_NAME_BYTES),
    '.snapshot', '.shee', 'a.snapshots', 'sheep', 'x.sheep', '~', 'a\\b', 'a:b', '\u0080']
  for (const name of good) t.equal(validateImageName(name), name, JSON.stringify(name))
  // 255 bytes exactly with multi-byte characters: 85 three-byte characters.
  const cjk = '日'.repeat(85)
  t.equal(Buffer.byteLength(cjk), 255)
  t.equal(validateImageName(cjk), cjk)
})

type Asserts = Pick<typeof t, 'ok' | 'equal' | 'match'>

async function rejects (t: Asserts, name: unknown, code: string, message: RegExp): Promise<void> {
  let err: unknown
  try { validateImageName(name) } catch (e) { err = e }
  t.ok(err instanceof SheepError, `${JSON.stringify(name)} throws a SheepError`)
  t.equal((err as SheepError).code, code, `${JSON.stringify(name)} -> ${code}`)
  t.match((err as SheepError).message, message)
}

t.test('validateImageName rejects every bad kind of name', async t => {
  await rejects(t, '', 'EINVAL', /empty/)
  for (const v of [undefined, null, 42, {}, ['a'], true]) await rejects(t, v, 'EINVAL', /empty/)
  await rejects(t, 'x'.repeat(MAX_NAME_BYTES + 1), 'ENAMETOOLONG', /255 bytes/)
  await rejects(t, 'é'.repeat(128), 'ENAMETOOLONG', /255 bytes/) // 128 characters, 256 bytes
  await rejects(t, '日'.repeat(86), 'ENAMETOOLONG', /255 bytes/)
  await rejects(t, '.', 'EINVAL', /not an image name/)
  await rejects(t, '..', 'EINVAL', /not an image name/)
  for (const n of ['/', 'a/b', '/a', 'a/', '../x']) await rejects(t, n, 'EINVAL', /must not contain "\/"/)
  for (const n of ['@', 'vm@snap', '@a', 'a@']) await rejects(t, n, 'EINVAL', /"@"/)
  for (const c of ['\u0000', '\u0001', '\n', '\r', '\t', '\u001b', '\u001f', '\u007f']) {
    await rejects(t, `a${c}b`, 'EINVAL', /control characters/)
    await rejects(t, c, 'EINVAL', /control characters/)
  }
  for (const n of ['.snapshots', '.sheep', '.snapshots-old', '.sheepctl', '.sheep.img']) await rejects(t, n, 'EINVAL', /reserved/)
})
