// The parts of fuse-native 2.2 that src/fuse uses (the package ships no types).
declare module 'fuse-native' {
  type Cb = (err: number, ...rest: unknown[]) => void
  interface FuseOptions {
    force?: boolean
    mkdir?: boolean
    maxRead?: number
    timeout?: number | false
    fsname?: string
    subtype?: string
    attrTimeout?: number
    entryTimeout?: number
    defaultPermissions?: boolean
    allowOther?: boolean
  }
  class Fuse {
    constructor (mnt: string, ops: Record<string, (...args: any[]) => void>, opts?: FuseOptions)
    mnt: string
    mount (cb: (err: Error | null) => void): void
    unmount (cb: (err: Error | null) => void): void
    protected _fuseOptions (): string
    static unmount (mnt: string, cb: (err: Error | null) => void): void
    static isConfigured (cb: (err: Error | null, yes: boolean) => void): void
    static [errno: string]: any
  }
  export = Fuse
}
