// Mutex and RwLock: ordering and exclusion, sequenced with promises only (no timers).

import t from 'tap'
import { Mutex, RwLock } from '../../../src/cow/lock'
import { settle } from '../tmp'

interface Deferred { promise: Promise<void>, resolve: () => void, reject: (err: Error) => void }

function deferred (): Deferred {
  let resolve!: () => void
  let reject!: (err: Error) => void
  const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

t.test('Mutex runs one at a time, in call order', async t => {
  const m = new Mutex()
  const log: string[] = []
  const gates = [deferred(), deferred(), deferred()]
  const runs = gates.map((g, i) => m.run(async () => {
    log.push(`start ${i}`)
    await g.promise
    log.push(`end ${i}`)
    return i
  }))
  await settle()
  t.same(log, ['start 0'], 'only the first runs')
  // Finishing them out of order does not let a later one in early.
  gates[2]?.resolve()
  gates[1]?.resolve()
  await settle()
  t.same(log, ['start 0'], 'later gates opening changes nothing while the first holds the lock')
  gates[0]?.resolve()
  t.same(await Promise.all(runs), [0, 1, 2], 'each run returns its own result')
  t.same(log, ['start 0', 'end 0', 'start 1', 'end 1', 'start 2', 'end 2'])
})

t.test('Mutex releases after a failure and passes the error on', async t => {
  const m = new Mutex()
  const log: string[] = []
  const a = m.run(async () => { log.push('a'); throw new Error('boom') })
  const b = m.run(async () => { log.push('b'); return 'b done' })
  await t.rejects(a, { message: 'boom' })
  t.equal(await b, 'b done')
  t.same(log, ['a', 'b'])
  // A synchronous throw inside an async fn, then the lock still works.
  await t.rejects(m.run(() => { throw new Error('sync') }), { message: 'sync' })
  t.equal(await m.run(async () => 1), 1)
})

t.test('Mutex: a run queued from inside a run waits for it', async t => {
  const m = new Mutex()
  const log: string[] = []
  let inner: Promise<void> | undefined
  await m.run(async () => {
    inner = m.run(async () => { log.push('inner') })
    await settle()
    log.push('outer end')
  })
  await inner
  t.same(log, ['outer end', 'inner'])
})

t.test('RwLock: many shared holders at once', async t => {
  const l = new RwLock()
  t.ok(l.tryShared())
  t.ok(l.tryShared())
  await l.acquireShared()
  l.releaseShared(); l.releaseShared(); l.releaseShared()
  // Free again: an exclusive is granted at once.
  let got = false
  void l.acquireExclusive().then(() => { got = true })
  await settle()
  t.ok(got)
  l.releaseExclusive()
})

t.test('RwLock: exclusive waits for every shared holder', async t => {
  const l = new RwLock()
  t.ok(l.tryShared())
  t.ok(l.tryShared())
  let exclusive = false
  const e = l.acquireExclusive().then(() => { exclusive = true })
  await settle()
  t.notOk(exclusive, 'waits while two share')
  l.releaseShared()
  await settle()
  t.notOk(exclusive, 'waits while one shares')
  l.releaseShared()
  await e
  t.ok(exclusive, 'granted when the last shared holder leaves')
  t.notOk(l.tryShared(), 'no shared while exclusive is held')
  l.releaseExclusive()
  t.ok(l.tryShared(), 'shared again after release')
  l.releaseShared()
})

t.test('RwLock: exclusive excludes exclusive', async t => {
  const l = new RwLock()
  await l.acquireExclusive()
  let second = false
  const e = l.acquireExclusive().then(() => { second = true })
  await settle()
  t.notOk(second)
  l.releaseExclusive()
  await e
  t.ok(second)
  l.releaseExclusive()
})

t.test('RwLock: new shared waits behind a waiting exclusive', async t => {
  const l = new RwLock()
  t.ok(l.tryShared(), 'reader 1 holds')
  const log: string[] = []
  const e = l.acquireExclusive().then(() => { log.push('exclusive') })
  await settle()
  t.notOk(l.tryShared(), 'tryShared refuses while an exclusive waits')
  const r2 = l.acquireShared().then(() => { log.push('reader 2') })
  await settle()
  t.same(log, [], 'reader 2 does not overtake the waiting exclusive')
  l.releaseShared() // reader 1 leaves
  await e
  await settle()
  t.same(log, ['exclusive'], 'exclusive first')
  l.releaseExclusive()
  await r2
  t.same(log, ['exclusive', 'reader 2'])
  l.releaseShared()
})

t.test('RwLock: readers waiting behind an exclusive all enter together', async t => {
  const l = new RwLock()
  await l.acquireExclusive()
  const log: number[] = []
  const readers = [0, 1, 2, 3].map(i => l.acquireShared().then(() => { log.push(i) }))
  await settle()
  t.same(log, [])
  l.releaseExclusive()
  await Promise.all(readers)
  t.same(log, [0, 1, 2, 3], 'in arrival order, all at once')
  let exclusive = false
  const e = l.acquireExclusive().then(() => { exclusive = true })
  for (let i = 0; i < 3; i++) { l.releaseShared(); await settle(); t.notOk(exclusive) }
  l.releaseShared()
  await e
  t.ok(exclusive)
  l.releaseExclusive()
})

t.test('RwLock: a stream of readers does not starve an exclusive', async t => {
  const l = new RwLock()
  t.ok(l.tryShared())
  let exclusive = false
  const e = l.acquireExclusive().then(() => { exclusive = true })
  // Readers keep arriving; none may jump ahead, so the exclusive gets in once the first leaves.
  const late: Array<Promise<void>> = []
  for (let i = 0; i < 5; i++) late.push(l.acquireShared())
  l.releaseShared()
  await e
  t.ok(exclusive)
  l.releaseExclusive()
  await Promise.all(late)
  for (let i = 0; i < 5; i++) l.releaseShared()
})

t.test('RwLock: a stream of exclusives does not starve a waiting reader', async t => {
  // The reader asked before the second exclusive did, so it must get in before that one.
  const l = new RwLock()
  await l.acquireExclusive() // writer 1 holds
  const log: string[] = []
  const reader = l.acquireShared().then(() => { log.push('reader') })
  await settle()
  let next = l.acquireExclusive().then(() => { log.push('writer 2') })
  await settle()
  l.releaseExclusive() // writer 1 leaves
  await settle()
  t.same(log.slice(0, 1), ['reader'], 'the earlier reader is served before the later writer')
  // Keep writers coming: the reader must still get in within a bounded number of them.
  for (let i = 3; i < 8 && !log.includes('reader'); i++) {
    await next
    next = l.acquireExclusive().then(() => { log.push(`writer ${i}`) })
    await settle()
    l.releaseExclusive()
    await settle()
  }
  t.ok(log.includes('reader'), `the reader got in; order: ${log.join(', ')}`)
  // Drain whatever is left so the test ends cleanly.
  if (log.includes('reader')) {
    l.releaseShared()
    await settle()
  }
  await next
  l.releaseExclusive()
  await reader
  if (log.filter(x => x === 'reader').length === 1 && log[log.length - 1] === 'reader') l.releaseShared()
})

t.test('RwLock.withExclusive releases on success and on failure', async t => {
  const l = new RwLock()
  t.equal(await l.withExclusive(async () => {
    t.notOk(l.tryShared(), 'held inside')
    return 5
  }), 5)
  t.ok(l.tryShared(), 'released after success')
  l.releaseShared()
  await t.rejects(l.withExclusive(async () => { throw new Error('fail') }), { message: 'fail' })
  t.ok(l.tryShared(), 'released after failure')
  l.releaseShared()
})

t.test('RwLock: exclusives are granted in arrival order', async t => {
  const l = new RwLock()
  t.ok(l.tryShared())
  const log: number[] = []
  const ex = [0, 1, 2].map(i => l.acquireExclusive().then(() => { log.push(i) }))
  await settle()
  l.releaseShared()
  for (let i = 0; i < 3; i++) {
    await ex[i]
    await settle()
    t.same(log, [0, 1, 2].slice(0, i + 1), `only exclusive ${i} holds`)
    l.releaseExclusive()
  }
})
