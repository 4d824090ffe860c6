// What every JavaScript shop handler needs to behave byte for byte like the
// Rust reference (the guests under guests/<name>/, checked by
// tests/vectors/*.jsonl): JSON read the way serde_json reads it, numbers
// printed the way Rust prints them, and the contract's shapes.

const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

// serde_json refuses documents nested deeper than this (its limit of 128
// counts down to zero).
const MAX_DEPTH = 127;
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Whether serde_json would have read `value` too: JSON.parse takes 1e999 as
 * Infinity and keeps lone surrogates (`"\ud800"`), and nests as deep as it
 * likes. One walk after parsing: with a reviver, called back for every
 * value, the shop's handlers took 1.7 times as long. Strings are looked at
 * only when the text has a surrogate escape at all.
 */
function serdeWouldRead(value, strings, depth) {
  if (typeof value === 'number') return Number.isFinite(value);
  if (typeof value === 'string') return !strings || !LONE_SURROGATE.test(value);
  if (value === null || typeof value !== 'object') return true;
  if (depth > MAX_DEPTH) return false;
  if (Array.isArray(value)) {
    return value.every((inner) => serdeWouldRead(inner, strings, depth + 1));
  }
  return Object.keys(value).every(
    (key) =>
      !(strings && LONE_SURROGATE.test(key)) && serdeWouldRead(value[key], strings, depth + 1),
  );
}

/** The payload as JSON, or `undefined` when serde_json would refuse it. */
export function parseJson(bytes) {
  try {
    // A BOM is kept (ignoreBOM), so that JSON.parse refuses it as serde does.
    const text = decoder.decode(bytes);
    const value = JSON.parse(text);
    return serdeWouldRead(value, SURROGATE_ESCAPE.test(text), 1) ? value : undefined;
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
