// How `sheep check` judges copies (src/swarm/check.ts): which copy it takes as the right one and
// what it calls each other copy, over a cluster given as plain data (the replicas' own checks and
// repairs run on real daemons in test/e2e/check.test.ts).

import t from 'tap'
import { checkCluster, type CheckContext, type Verified } from '../../src/swarm/check'
import { dataOid, metaOid, type ObjectId, oidToHex } from '../../src/objects/oid'

const NODES = ['n1', 'n2', 'n3']

/** A cluster whose copies are given per object and node; a heal copies the source's answer. */
function cluster (copies: Map<ObjectId, Record<string, Verified>>, opts: { flaky?: Set<string> } = {}): CheckContext & { heals: string[] } {
  const heals: string[] = []
  return {
    heals,
    members: () => NODES,
    list: async node => [...copies].filter(([, c]) => c[node]?.state === 'ok' || c[node]?.state === 'damaged').map(([oid]) => oid),
    replicasOf: () => NODES,
    verify: async (node, oid) => {
      const v = (copies.get(oid) as Record<string, Verified>)[node] ?? { state: 'missing', detail: 'none' }
      // A copy behind for a moment (a write on its way): right when asked again.
      if (opts.flaky?.delete(`${oidToHex(oid)}@${node}`) === true) return { state: 'behind', version: 1 }
      return v
    },
    heal: async (node, oid, source) => {
      heals.push(`${oidToHex(oid)}@${node}<-${source}`)
      const c = copies.get(oid) as Record<string, Verified>
      if (c[node]?.state === 'unreachable') throw new Error('no answer')
      c[node] = c[source] as Verified
    },
    describe: vid => vid === 1 ? 'vm1' : ''
  }
}

const ok = (version: number, digest: number): Verified => ({ state: 'ok', version, digest })

t.test('the newest whole copy is chosen; older, damaged and missing ones are named, then repaired from it', async t => {
  const oid = dataOid(1, 0)
  const ctx = cluster(new Map([[oid, { n1: ok(5, 0xa), n2: ok(7, 0xb), n3: { state: 'damaged', detail: 'checksums' } }]]))
  const found = await checkCluster(ctx)
  t.equal(found.problems, 2)
  t.same(found.images[0]?.problems[0]?.copies.map(c => `${c.node} ${c.state}`), ['n1 behind', 'n2 ok', 'n3 damaged'])
  t.equal(found.images[0]?.image, 'vm1')
  const fixed = await checkCluster(ctx, { repair: true })
  t.same(ctx.heals, [`${oidToHex(oid)}@n1<-n2`, `${oidToHex(oid)}@n3<-n2`], 'both repaired from n2, the newest')
  t.equal(fixed.problems, 0)
  t.equal(fixed.repaired, 2)
  t.equal((await checkCluster(ctx)).problems, 0, 'and clean after')
})

t.test('at one version the bytes most copies hold win; on a tie, the first replica\'s', async t => {
  const a = dataOid(1, 1)
  const b = dataOid(1, 2)
  const ctx = cluster(new Map([
    [a, { n1: ok(3, 1), n2: ok(3, 2), n3: ok(3, 2) }],
    [b, { n1: ok(3, 1), n2: ok(3, 2), n3: { state: 'missing', detail: 'none' } }]
  ]))
  const r = await checkCluster(ctx)
  const states = r.images[0]?.problems.map(p => p.copies.map(c => `${c.node} ${c.state}`).join(', '))
  t.same(states, ['n1 divergent, n2 ok, n3 ok', 'n1 ok, n2 divergent, n3 missing'])
})

t.test('no whole copy: nothing is repaired, and the check says why; an unreachable member is named, not repaired', async t => {
  const a = dataOid(1, 3)
  const b = dataOid(1, 4)
  const ctx = cluster(new Map([
    [a, { n1: { state: 'damaged', detail: 'x' }, n2: { state: 'damaged', detail: 'y' }, n3: { state: 'missing', detail: 'none' } }],
    [b, { n1: ok(2, 1), n2: ok(2, 1), n3: { state: 'unreachable', detail: 'no answer' } }]
  ]))
  const r = await checkCluster(ctx, { repair: true })
  t.same(ctx.heals, [], 'no heal was tried')
  t.equal(r.problems, 4)
  t.match(JSON.stringify(r), /no whole copy to repair it from/)
})

t.test('a copy behind only for a moment is looked at again before it is reported; cluster records are grouped apart; a vid filter keeps to an image', async t => {
  const a = dataOid(1, 5)
  const dir = metaOid(0)
  const ctx = cluster(new Map([[a, { n1: ok(4, 9), n2: ok(4, 9), n3: ok(4, 9) }], [dir, { n1: ok(1, 1), n2: ok(1, 1), n3: ok(1, 1) }]]), { flaky: new Set([`${oidToHex(a)}@n2`]) })
  const r = await checkCluster(ctx)
  t.equal(r.problems, 0, 'not reported')
  t.same(r.images.map(i => i.image).sort(), ['(cluster records)', 'vm1'])
  const only = await checkCluster(ctx, { vids: new Set([1]) })
  t.same(only.images.map(i => i.image), ['vm1'])
  t.equal(only.objects, 1)
})
