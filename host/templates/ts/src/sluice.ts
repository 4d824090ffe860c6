// The sluice contract (wit/handler.wit, world `handler`) as componentize-js
// hands it to JavaScript: bytes are Uint8Array, u64 is bigint, an option is
// a value or undefined, a variant is `{ tag, val }`, and an error result is
// thrown. Types only: nothing here is emitted.

export type Bytes = Uint8Array;

export interface Header {
  name: string;
  value: Bytes;
}

export interface Message {
  topic: string;
  partition: number;
  offset: bigint;
  key?: Bytes;
  payload: Bytes;
  headers: Header[];
  /** Milliseconds since the Unix epoch; 0 when the source has none. */
  timestamp: bigint;
}

export interface Publish {
  topic: string;
  key?: Bytes;
  payload: Bytes;
  headers: Header[];
}

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

export interface LogEntry {
  level: LogLevel;
  text: string;
}

export type HttpMethod = 'get' | 'head' | 'post' | 'put' | 'patch' | 'delete' | 'options';

export interface HttpRequest {
  method: HttpMethod;
  url: string;
  headers: Header[];
  body: Bytes;
}

/**
 * A publish the host makes later, durably, at `due` (milliseconds since the
 * Unix epoch, computed from the message, never from a clock). Scheduling a
 * pending `id` again replaces it.
 */
export interface Schedule {
  id: string;
  due: bigint;
  publish: Publish;
}

/** A side effect for the host to execute. */
export type Output =
  | { tag: 'publish'; val: Publish }
  | { tag: 'log'; val: LogEntry }
  | { tag: 'http'; val: HttpRequest }
  | { tag: 'schedule'; val: Schedule }
  /** Cancels the route's pending timer of this id, if there is one. */
  | { tag: 'cancel'; val: string };

/** Why a handler produced no outputs: throw one. */
export type HandleError =
  | { tag: 'invalid-input'; val: string }
  | { tag: 'rejected'; val: string }
  | { tag: 'failed'; val: string };

/** What the module exports as `handle`. */
export interface Handle {
  handle(msg: Message): Output[];
}
