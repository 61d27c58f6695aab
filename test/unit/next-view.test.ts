// The coordinator's rule for the next view (src/swarm/next-view.ts): down versus out (issue 12),
// joiners, changed member records, and when it proposes nothing. Before this was a pure function
// the rule was covered only end to end (test/e2e/down-out.test.ts).

import t from 'tap'
import { nextView, type Reachable } from '../../src/swarm/next-view'
import type { Member, View } from '../../src/swarm/view'

const member = (id: string, port = 1): Member => ({ id, host: '127.0.0.1', port, zone: '', weight: 1 })
const view = (ids: string[], extra: Partial<View> = {}): View => ({ epoch: 5, members: ids.map(id => member(id)), ...extra })
const MIN = 60_000
const reach = (r: Omit<Reachable, 'arriving' | 'former'> & Partial<Reachable>): Reachable => ({ arriving: [], former: [], ...r })

t.test('a member whose links are gone is down, with the time it was found gone, until --out-after has passed; then out', async t => {
  const v = view(['a', 'b', 'c'])
  const found = nextView(v, reach({ self: member('a'), peers: [member('b')], now: 1000, outAfterMs: 10 * MIN }))
  t.same(found?.members.map(m => m.id), ['a', 'b', 'c'], 'c stays a member')
  t.same(found?.down, [{ id: 'c', since: 1000 }], 'down since now')
  const downView = view(['a', 'b', 'c'], { down: [{ id: 'c', since: 1000 }] })
  t.equal(nextView(downView, reach({ self: member('a'), peers: [member('b')], now: 1000 + 10 * MIN - 1, outAfterMs: 10 * MIN })), null, 'nothing new before out-after has passed')
  const out = nextView(downView, reach({ self: member('a'), peers: [member('b')], now: 1000 + 10 * MIN, outAfterMs: 10 * MIN }))
  t.same(out, { members: [member('a'), member('b')], down: [] }, 'out once it has')
  t.same(nextView(v, reach({ self: member('a'), peers: [member('b')], now: 1000, outAfterMs: 0 })), { members: [member('a'), member('b')], down: [] }, '--out-after 0: out at once')
})

t.test('a down member whose links are back is proposed up again, with its record as it gives it now', async t => {
  const downView = view(['a', 'b', 'c'], { down: [{ id: 'c', since: 1000 }] })
  const up = nextView(downView, reach({ self: member('a'), peers: [member('b'), member('c', 7)], now: 2000, outAfterMs: 10 * MIN }))
  t.same(up, { members: [member('a'), member('b'), member('c', 7)], down: [] })
})

t.test('only the coordinator of a majority proposes, and only a change', async t => {
  const v = view(['a', 'b', 'c'])
  t.equal(nextView(v, reach({ self: member('b'), peers: [member('a'), member('c')], now: 0, outAfterMs: 0 })), null, 'b reaches a, whose id is lower')
  t.same(nextView(v, reach({ self: member('b'), peers: [member('c')], now: 0, outAfterMs: MIN }))?.down.map(d => d.id), ['a'], 'b is the coordinator when a is gone')
  t.equal(nextView(v, reach({ self: member('a'), peers: [], now: 0, outAfterMs: 0 })), null, 'a alone is not a majority of three')
  t.equal(nextView(v, reach({ self: member('d'), peers: [member('a'), member('b'), member('c')], now: 0, outAfterMs: 0 })), null, 'a node that is not a member proposes nothing')
  t.equal(nextView(v, reach({ self: member('a'), peers: [member('b'), member('c')], now: 0, outAfterMs: 0 })), null, 'nothing changed')
  const moved = nextView(v, reach({ self: member('a', 9), peers: [member('b'), member('c')], now: 0, outAfterMs: 0 }))
  t.same(moved?.members[0], member('a', 9), 'the coordinator\'s own record changed (a new port)')
})

t.test('a linked node that is not a member joins, unless admission is manual', async t => {
  const v = view(['a', 'b'])
  t.same(nextView(v, reach({ self: member('a'), peers: [member('b'), member('z')], now: 0, outAfterMs: 0 }))?.members.map(m => m.id), ['a', 'b', 'z'])
  t.equal(nextView({ ...v, manual: true }, reach({ self: member('a'), peers: [member('b'), member('z')], now: 0, outAfterMs: 0 })), null, 'manual: z waits for sheep node admit')
})

t.test('two members down at once: each keeps its own time', async t => {
  const v = view(['a', 'b', 'c', 'd', 'e'], { down: [{ id: 'd', since: 500 }] })
  const next = nextView(v, reach({ self: member('a'), peers: [member('b'), member('c')], now: 900, outAfterMs: MIN }))
  t.same(next?.down, [{ id: 'd', since: 500 }, { id: 'e', since: 900 }])
})

t.test('a member the view just added is not taken as gone while its links open: then down, or out', async t => {
  const v = view(['a', 'b', 'c'])
  t.equal(nextView(v, reach({ self: member('a'), peers: [member('b')], now: 0, outAfterMs: 0, arriving: ['c'] })), null, 'c is kept, not down')
  const joined = nextView(v, reach({ self: member('a'), peers: [member('b'), member('z')], now: 0, outAfterMs: 0, arriving: ['c'] }))
  t.same(joined?.members.map(m => m.id), ['a', 'b', 'c', 'z'], 'another change keeps it as a member, up')
  t.same(joined?.down, [])
  t.same(nextView(v, reach({ self: member('a'), peers: [member('b')], now: 0, outAfterMs: MIN }))?.down.map(d => d.id), ['c'], 'once its time has passed, down')
})

t.test('under manual admission a former member (out, not removed) comes back without an operator', async t => {
  const v = view(['a', 'b'], { manual: true })
  t.same(nextView(v, reach({ self: member('a'), peers: [member('b'), member('c'), member('z')], now: 0, outAfterMs: 0, former: ['a', 'b', 'c'] }))?.members.map(m => m.id), ['a', 'b', 'c'], 'c, once a member, joins; z waits')
})
