// Three replicas in one process for the gateway's unit tests: real local stores, each behind its
// own recovery guard and the real replica handler, and the real gateway writing to them over
// links that are direct calls. Faults on demand: a full disk, a slow write, a request or an
// answer lost on the way, a link not up yet, an answer held back.

import { SheepError } from '../../src/errors'
import { LocalObjectStore } from '../../src/objects/local-store'
import { epochFloor } from '../../src/objects/versions'
import type { Cluster } from '../../src/swarm/cluster'
import { Gateway } from '../../src/swarm/gateway'
import type { Link } from '../../src/swarm/link'
import { Op, type Request, type Response } from '../../src/swarm/messages'
import { Recovery, type RecoveryStore } from '../../src/swarm/recovery'
import { replicaHandler } from '../../src/swarm/replica'
import type { View } from '../../src/swarm/view'
import { tmpDir } from './tmp'

const EMPTY = new Uint8Array(0)
export const IDS = ['a', 'b', 'c']
export const VIEW: View = { epoch: 1, members: IDS.map(id => ({ id, host: '127.0.0.1', port: 1, zone: '', weight: 1 })) }

export interface Node {
  id: string
  store: LocalObjectStore
  /** Its writes fail with ENOSPC while set. */
  full: boolean
  /** Its next write waits this long first (ms), as a busy disk's does. */
  slowNext?: number
  /** The answer to its next write is lost on the way back (it took the write), as when a link goes. */
  loseNextAnswer?: boolean
  /** Write requests to it for which this says so are lost on the way (it never sees them), as when a link goes. */
  dropWrite?: (req: Omit<Request, 'id'>) => boolean
  /** Links to it are not up before this moment (Date.now()), as just after a view commits. */
  linkUpAt?: number
  /** Its next answer to this operation is held this long on the way back (it was served at once). */
  holdNextAnswer?: { op: Op, ms: number }
  recovery: Recovery
  serve: (req: Request, from: string) => Promise<Partial<Response>>
}

interface Teardownable { teardown (fn: () => unknown): void }

/** The epoch every node is in (a test moves them all to a new view with nextEpoch()), and the object's replicas in it if not all three. */
export interface Era { epoch: number, replicas?: string[] }

export async function makeNodes (t: Teardownable, opts: { chainWaitMs?: number, era?: Era } = {}): Promise<Map<string, Node>> {
  const nodes = new Map<string, Node>()
  const era = opts.era ?? { epoch: 1 }
  for (const id of IDS) {
    const store = new LocalObjectStore(tmpDir(t), { chainWaitMs: opts.chainWaitMs })
    await store.open()
    t.teardown(async () => await store.close())
    await store.asReplica(() => epochFloor(era.epoch), () => era.epoch)
    const node = { id, store, full: false } as Node
    // The disk: a full one refuses every write, as a store on a full file system does.
    const disk = new Proxy(store, {
      get (target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown
        if (typeof value !== 'function') return value
        if (['write', 'create', 'replace'].includes(String(prop))) {
          return async (...args: unknown[]) => {
            if (node.full) throw SheepError.noSpace(`store of ${id}: no space left on device`)
            const slow = node.slowNext
            node.slowNext = undefined
            if (slow !== undefined) await new Promise(resolve => setTimeout(resolve, slow))
            return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args)
          }
        }
        return (value as (...a: unknown[]) => unknown).bind(target)
      }
    }) as RecoveryStore
    nodes.set(id, node)
    node.recovery = new Recovery(disk, clusterOf(nodes, id, VIEW, IDS.length, era), { replicasOf: () => era.replicas ?? IDS, widest: () => era.replicas ?? IDS }, line => { if (process.env.MW_LOG !== undefined) console.error(id, line) })
    node.serve = replicaHandler(node.recovery.guarded(), {
      epoch: () => era.epoch,
      quorate: () => true,
      asPrimary: async () => { throw new Error('not used') },
      release: async () => {},
      isMember: () => true,
      // a writes the image: it holds the token
      tokenOf: async () => ({ holder: 'a', generation: 1, deleted: false }),
      forceStart: async only => await node.recovery.forceStart(only),
      checks: node.recovery
    })
  }
  for (const n of nodes.values()) {
    n.recovery.imagesLoaded()
    n.recovery.start(VIEW)
  }
  return nodes
}

/** Every node moves to the next view (of the same members): its recovery starts a round for it. */
export function nextEpoch (nodes: Map<string, Node>, era: Era, replicas?: string[]): void {
  era.epoch++
  era.replicas = replicas
  for (const n of nodes.values()) n.recovery.start({ ...VIEW, epoch: era.epoch })
}

/** What node `self` sees of the cluster: one view (of a, b and c unless told), every link up; it knew a view of `largest` members. */
function clusterOf (nodes: Map<string, Node>, self: string, view = VIEW, largest = IDS.length, era: Era = { epoch: 1 }): Cluster {
  const up = (id: string): boolean => ((nodes.get(id) as Node).linkUpAt ?? 0) <= Date.now()
  const link = (id: string): Link => ({
    async call (req: Omit<Request, 'id'>): Promise<Response> {
      const base: Response = { id: 0, error: '', message: '', epoch: era.epoch, version: 0, size: 0, data: EMPTY }
      const node = nodes.get(id) as Node
      if (req.op === Op.Write && node.dropWrite?.(req) === true) {
        throw SheepError.unreachable(`the link to ${id} went`)
      }
      let answer: Response
      try {
        answer = { ...base, ...await node.serve({ ...req, id: 0 }, self) }
      } catch (err) {
        const e = err as SheepError
        answer = { ...base, error: e.code, message: e.message }
      }
      const hold = node.holdNextAnswer
      if (hold !== undefined && hold.op === req.op) {
        node.holdNextAnswer = undefined
        await new Promise(resolve => setTimeout(resolve, hold.ms))
      }
      if (node.loseNextAnswer === true && req.op === Op.Write) {
        node.loseNextAnswer = false
        throw SheepError.unreachable(`the link to ${id} went`)
      }
      return answer
    }
  }) as unknown as Link
  return {
    id: self,
    get epoch () { return era.epoch },
    quorate: true,
    get view () { return { ...view, epoch: era.epoch } },
    placement: { replicas: () => era.replicas ?? view.members.map(m => m.id) },
    largestView: largest,
    link: (id: string) => up(id) ? link(id) : null,
    linkTo: async (id: string, ms: number) => {
      for (const end = Date.now() + ms; !up(id) && Date.now() < end;) await new Promise(resolve => setTimeout(resolve, 10))
      return up(id) ? link(id) : null
    },
    notify: () => {},
    quorum: async () => {},
    nextView: async (epoch: number, ms: number) => {
      for (const end = Date.now() + ms; era.epoch <= epoch && Date.now() < end;) await new Promise(resolve => setTimeout(resolve, 10))
      if (era.epoch <= epoch) throw SheepError.unreachable('no new view in this test')
      return { ...view, epoch: era.epoch }
    }
  } as unknown as Cluster
}

export function gatewayOn (nodes: Map<string, Node>, id: string, minCopies = 0, view = VIEW, largestView = IDS.length, era?: Era): Gateway {
  const node = nodes.get(id) as Node
  return new Gateway(node.recovery.guarded(), clusterOf(nodes, id, view, largestView, era), { copiesOf: () => 3, minCopies, viewWaitMs: 1000, serveAsItIs: async oid => { await node.recovery.forceStart(oid) } })
}

export async function readVia (store: { read: Gateway['read'] }, oid: bigint): Promise<number> {
  const out = Buffer.alloc(4096)
  await store.read(oid, 0, 4096, out, 0)
  return out[0] as number
}

export async function until (what: () => Promise<boolean>, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (await what()) return true
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return await what()
}

