// What every JavaScript shop handler needs to behave byte for byte like the
// Rust reference (the guests under guests/<name>/, checked by
// tests/vectors/*.jsonl): JSON read the way serde_json reads it, numbers
// printed the way Rust prints them, and the contract's shapes.

const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

// serde_json refuses documents nested deeper than this (its limit of 128
// counts down to zero).
const MAX_DEPTH = 127;

// What JSON.parse reads and serde_json refuses: a lone surrogate escape
// (`"\ud800"`), a number out of f64's range (JSON.parse makes 1e999
// Infinity), nesting deeper than MAX_DEPTH. It may hide in a value
// JSON.parse drops unseen (the earlier of two equal keys), so the text is
// what is checked. Only texts that could hold one are scanned: a surrogate
// escape, an exponent of three digits or 309 digits in a row, more than
// MAX_DEPTH brackets. The bracket count is anchored at the start: searched
// from every position, it took time quadratic in the text (600 µs a call).
const MAY_NOT_READ = /\\u[dD][89a-fA-F]|[eE][+-]?\d{3}|\d{309}/;
const MANY_BRACKETS = new RegExp(String.raw`^(?:[^[{]*[[{]){${MAX_DEPTH + 1}}`);

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * Whether serde_json reads `text`, which JSON.parse read: one pass over it,
 * every value included.
 */
function serdeReads(text) {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      i = stringEnd(text, i);
      if (i < 0) return false;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > MAX_DEPTH) return false;
    } else if (c === 0x5d || c === 0x7d) {
      depth--;
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      let end = i + 1;
      while (end < text.length && isNumberChar(text.charCodeAt(end))) end++;
      if (!Number.isFinite(Number(text.slice(i, end)))) return false;
      i = end - 1;
    }
  }
  return true;
}

/** Digits, sign, point and exponent. */
function isNumberChar(c) {
  return (c >= 0x30 && c <= 0x39) || c === 0x2b || c === 0x2d || c === 0x2e || c === 0x45 || c === 0x65;
}

/**
 * The index of the quote that closes the string opening at `start`, or -1
 * when it has a lone surrogate escape (serde_json pairs a high one with the
 * low one right after it, and refuses anything else).
 */
function stringEnd(text, start) {
  let high = false;
  let i = start + 1;
  for (;;) {
    const c = text.charCodeAt(i);
    if (c === BACKSLASH && text.charCodeAt(i + 1) === 0x75) {
      const unit = parseInt(text.slice(i + 2, i + 6), 16);
      const isHigh = unit >= 0xd800 && unit <= 0xdbff;
      const isLow = unit >= 0xdc00 && unit <= 0xdfff;
      if (high !== isLow) return -1;
      high = isHigh;
      i += 6;
      continue;
    }
    if (high) return -1;
    if (c === QUOTE) return i;
    i += c === BACKSLASH ? 2 : 1;
  }
}

/** The payload as JSON, or `undefined` when serde_json would refuse it. */
export function parseJson(bytes) {
  try {
    // A BOM is kept (ignoreBOM), so that JSON.parse refuses it as serde does.
    const text = decoder.decode(bytes);
    const value = JSON.parse(text);
    const suspect = MAY_NOT_READ.test(text) || MANY_BRACKETS.test(text);
    return !suspect || serdeReads(text) ? value : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `value` is a JSON object (not an array, not null). */
export function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** An object's own field (never one inherited, like `toString`). */
export function own(object, field) {
  return Object.hasOwn(object, field) ? object[field] : undefined;
}

/** A number as Rust's `Display` for f64 writes it: never an exponent. */
export function formatFloat(x) {
  if (Object.is(x, -0)) return '-0';
  const text = String(x);
  const parts = /^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!parts) return text;
  const [, sign, whole, fraction = '', exponent] = parts;
  const digits = whole + fraction;
  const point = whole.length + Number(exponent);
  if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`;
  if (point >= digits.length) return sign + digits + '0'.repeat(point - digits.length);
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** A `handle-error` of kind `invalid-input`, to throw. */
export function invalidInput(detail) {
  return { tag: 'invalid-input', val: detail };
}

/** A `handle-error` of kind `rejected`, to throw. */
export function rejected(detail) {
  return { tag: 'rejected', val: detail };
}

/** UTF-8 bytes of a string. */
export function bytes(text) {
  return encoder.encode(text);
}

/** A `publish` output of `body` as JSON, keyed by `key`. */
export function publishJson(topic, key, body) {
  return {
    tag: 'publish',
    val: {
      topic,
      key: bytes(key),
      payload: bytes(JSON.stringify(body)),
      headers: [{ name: 'content-type', value: bytes('application/json') }],
    },
  };
}

/** An `info` log output. */
export function info(text) {
  return { tag: 'log', val: { level: 'info', text } };
}

/**
 * A `schedule` output (contract 0.4): publish `output`'s record (made by
 * `publishJson`) at `due`, milliseconds since the Unix epoch, computed from
 * the message (its `timestamp`, a BigInt), never from a clock. Scheduling
 * a pending `id` again replaces it.
 */
export function schedule(id, due, output) {
  return { tag: 'schedule', val: { id, due: BigInt(due), publish: output.val } };
}

/** A `cancel` output (contract 0.4): the pending timer `id` never fires. */
export function cancel(id) {
  return { tag: 'cancel', val: id };
}
