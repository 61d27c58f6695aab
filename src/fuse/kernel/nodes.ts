// Node ids for the kernel session. The kernel names files by the node id a LOOKUP (or CREATE)
// answered, counts its lookups and FORGETs them; the adapter core names files by path. Ids are
// never reused, so a generation of 0 keeps node id and generation unique for the mount's life.

import { SheepError } from '../../errors'
import { FUSE_ROOT_ID } from './protocol'

/** handles: the node's open file handles, through which an unlinked file is still reached. */
interface Node { path: string | null, lookups: number, handles: Set<number> }

export class NodeTable {
  private readonly byId = new Map<number, Node>([[FUSE_ROOT_ID, { path: '/', lookups: 1, handles: new Set() }]])
  private readonly byPath = new Map<string, number>([['/', FUSE_ROOT_ID]])
  private next = FUSE_ROOT_ID + 1

  /** The path of a node; ENOENT for one whose name was unlinked or replaced, or never given. */
  path (id: number): string {
    const p = this.byId.get(id)?.path
    if (p === undefined || p === null) throw SheepError.notFound(`node ${id}`)
    return p
  }

  /** The path of `name` in folder `parent`. */
  child (parent: number, name: string): string {
    const dir = this.path(parent)
    return dir === '/' ? `/${name}` : `${dir}/${name}`
  }

  /** The id the kernel now knows `path` by, one more lookup of it counted. */
  lookedUp (path: string): number {
    const known = this.byPath.get(path)
    if (known !== undefined) {
      (this.byId.get(known) as Node).lookups++
      return known
    }
    const id = this.next++
    this.byId.set(id, { path, lookups: 1, handles: new Set() })
    this.byPath.set(path, id)
    return id
  }

  /** The id a directory listing gives `path`, if the kernel knows it. */
  idOf (path: string): number | undefined {
    return this.byPath.get(path)
  }

  /** The kernel dropped `n` lookups of a node; the last one frees the id. The root is never dropped. */
  forget (id: number, n: number): void {
    const node = this.byId.get(id)
    if (node === undefined || id === FUSE_ROOT_ID) return
    node.lookups -= n
    if (node.lookups > 0) return
    this.byId.delete(id)
    if (node.path !== null && this.byPath.get(node.path) === id) this.byPath.delete(node.path)
  }

  /** `path` is gone (unlinked): its node lives on, nameless, for the handles open on it. */
  removed (path: string): void {
    const id = this.byPath.get(path)
    if (id === undefined) return
    this.byPath.delete(path)
    const node = this.byId.get(id)
    if (node !== undefined) node.path = null
  }

  /** `from` is now `to`; whatever `to` named before is gone. */
  renamed (from: string, to: string): void {
    this.removed(to)
    const id = this.byPath.get(from)
    if (id === undefined) return
    this.byPath.delete(from)
    this.byPath.set(to, id)
    const node = this.byId.get(id)
    if (node !== undefined) node.path = to
  }

  opened (id: number, fh: number): void {
    this.byId.get(id)?.handles.add(fh)
  }

  closed (id: number, fh: number): void {
    this.byId.get(id)?.handles.delete(fh)
  }

  /**
   * An open handle of a node whose name is gone: the kernel asks for an unlinked file's
   * attributes (fstat) by node id alone.
   */
  handleOfNameless (id: number): number | undefined {
    const node = this.byId.get(id)
    if (node === undefined || node.path !== null) return undefined
    return node.handles.values().next().value
  }

  /** Node ids the kernel holds (for status). */
  get size (): number {
    return this.byId.size
  }
}
