// SyncQueue (src/objects/sync-queue.ts): a sync returns only once everything added before it is
// durable, including what an overlapping sync took; a failed sync gives its items back.

import t from 'tap'
import { SyncQueue } from '../../src/objects/sync-queue'

interface Pending { items: string[], done: (err?: Error) => void }

function queue (): { q: SyncQueue<string>, runs: Pending[] } {
  const runs: Pending[] = []
  const q = new SyncQueue<string>(async items => await new Promise<void>((resolve, reject) => {
    runs.push({ items, done: err => err === undefined ? resolve() : reject(err) })
  }))
  return { q, runs }
}

const tick = async (): Promise<void> => await new Promise(resolve => setImmediate(resolve))

t.test('a sync that finds nothing new still waits for the sync under way that took its items', async t => {
  const { q, runs } = queue()
  q.add('a')
  let firstDone = false
  let secondDone = false
  const first = q.sync().then(() => { firstDone = true })
  const second = q.sync().then(() => { secondDone = true })
  await tick()
  t.same(runs.map(r => r.items), [['a']], 'one run, with a; the second sync started none')
  t.notOk(secondDone, 'the second sync waits for the first one\'s run')
  runs[0]?.done()
  await Promise.all([first, second])
  t.ok(firstDone && secondDone)
})

t.test('items added during a run go to the next run; nothing added, nothing run', async t => {
  const { q, runs } = queue()
  await q.sync()
  t.equal(runs.length, 0, 'an empty sync runs nothing')
  q.add('a')
  const first = q.sync()
  q.add('b')
  q.add('b')
  const second = q.sync()
  await tick()
  t.same(runs.map(r => r.items), [['a'], ['b']], 'b in a run of its own, once')
  runs[1]?.done()
  runs[0]?.done()
  await Promise.all([first, second])
})

t.test('a failed run fails every sync waiting for it and gives its items back to the next', async t => {
  const { q, runs } = queue()
  q.add('a')
  const first = q.sync()
  const second = q.sync()
  await tick()
  runs[0]?.done(new Error('EIO'))
  await t.rejects(first, /EIO/)
  await t.rejects(second, /EIO/, 'the overlapping sync fails too: its caller depended on a')
  const third = q.sync()
  await tick()
  t.same(runs[1]?.items, ['a'], 'a is synced again')
  runs[1]?.done()
  await third
})
