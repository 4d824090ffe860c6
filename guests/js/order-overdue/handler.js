// order-overdue in JavaScript: raise OrderOverdue for an order not shipped
// in time, through one timer per order. Means exactly what the Rust version
// (guests/order-overdue) means: tests/vectors/order-overdue.jsonl.

import {
  cancel,
  info,
  invalidInput,
  isObject,
  own,
  parseJson,
  publishJson,
  schedule,
} from '../shared/contract.js';

const OUTPUT_TOPIC = 'order-alerts';
// The longest deadline an event may set: a year.
const MAX_WITHIN_SECONDS = 31536000;
const MAX_TIME = 2n ** 64n - 1n;

/** A required, non-empty string field. */
function text(event, field) {
  const value = own(event, field);
  if (value === undefined || value === null) throw invalidInput(`missing ${field}`);
  if (typeof value !== 'string') throw invalidInput(`${field} is not a string`);
  if (value === '') throw invalidInput(`${field} is empty`);
  return value;
}

/** `shipWithinSeconds`: a JSON number with no fractional part, 1 to a year. */
function withinSeconds(event) {
  const value = own(event, 'shipWithinSeconds');
  if (!Number.isInteger(value) || value < 1 || value > MAX_WITHIN_SECONDS) {
    throw invalidInput(`shipWithinSeconds is not a whole number from 1 to ${MAX_WITHIN_SECONDS}`);
  }
  return value;
}

export const handle = {
  handle(msg) {
    const event = parseJson(msg.payload);
    if (event === undefined) throw invalidInput('not an order event: payload is not JSON');
    if (!isObject(event)) throw invalidInput('not an order event: payload is not a JSON object');
    const kind = text(event, 'type');
    const orderId = text(event, 'orderId');
    switch (kind) {
      case 'OrderPlaced':
      case 'ShipmentDelayed': {
        const within = withinSeconds(event);
        // From the message's time, never a clock: a replay gives the same
        // due time, and a later event replaces the timer.
        const due = msg.timestamp + BigInt(within) * 1000n;
        if (due > MAX_TIME) throw invalidInput('the deadline is past the largest time');
        const alert = { type: 'OrderOverdue', orderId, after: kind, withinSeconds: within };
        return [
          schedule(orderId, due, publishJson(OUTPUT_TOPIC, orderId, alert)),
          info(`order ${orderId}: overdue unless shipped within ${within} s of ${kind}`),
        ];
      }
      case 'OrderShipped':
      case 'OrderCancelled':
        return [cancel(orderId), info(`order ${orderId}: ${kind}, no longer overdue`)];
      default:
        throw invalidInput(`unknown order event type "${kind}"`);
    }
  },
};
