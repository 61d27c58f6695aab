// The parts of compact-encoding that Sheep uses (the package ships no types).
declare module 'compact-encoding' {
  namespace c {
    interface State { start: number, end: number, buffer: Uint8Array | null }
    interface Encoding<T> {
      preencode (state: State, value: T): void
      encode (state: State, value: T): void
      decode (state: State): T
    }
    const uint: Encoding<number>
    const uint8: Encoding<number>
    const uint32: Encoding<number>
    const uint64: Encoding<number>
    const float64: Encoding<number>
    const biguint64: Encoding<bigint>
    const bool: Encoding<boolean>
    const fixed32: Encoding<Uint8Array>
    const fixed64: Encoding<Uint8Array>
    const string: Encoding<string>
    const utf8: Encoding<string>
    const buffer: Encoding<Uint8Array | null>
    /** The rest of the buffer, unprefixed: only as the last field. */
    const raw: Encoding<Uint8Array>
    function array<T> (enc: Encoding<T>): Encoding<T[]>
    function state (start?: number, end?: number, buffer?: Uint8Array | null): State
    function encode<T> (enc: Encoding<T>, value: T): Buffer
    function decode<T> (enc: Encoding<T>, buffer: Uint8Array): T
  }
  export = c
}
