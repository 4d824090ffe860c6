// cancel-order 0.2.0 in JavaScript, a decider over the order's stream
// (`order-<orderId>`): an order is cancelled at most once. Means exactly
// what the Rust version (guests/cancel-order-decider) means:
// tests/vectors/cancel-order-decider.jsonl.

import { bytes, parseJson } from '../shared/contract.js';
import { orderIdOf, outputs, readRequest, verdict } from '../shared/cancel-rules.js';

// The state: why the order was cancelled, or null. Only this version reads it.
function load(state) {
  return JSON.parse(new TextDecoder().decode(state));
}

function save(order) {
  return bytes(JSON.stringify(order));
}

export const decide = {
  streamId(msg) {
    return `order-${orderIdOf(readRequest(msg.payload))}`;
  },

  initial() {
    return save({ cancelled: null });
  },

  fold(state, events) {
    const order = load(state);
    for (const event of events) {
      if (event.type !== 'OrderCancelled' || order.cancelled !== null) continue;
      const data = parseJson(event.data);
      if (data !== null && typeof data === 'object' && typeof data.reason === 'string') {
        order.cancelled = data.reason;
      }
    }
    return save(order);
  },

  decide(msg, state) {
    const order = load(state);
    const request = readRequest(msg.payload);
    const orderId = orderIdOf(request);
    let decided = verdict(request);
    const events = [];
    if (order.cancelled !== null) {
      decided = { cancelled: false, reason: `already cancelled (${order.cancelled})` };
    } else if (decided.cancelled) {
      events.push({
        type: 'OrderCancelled',
        data: bytes(JSON.stringify({ reason: decided.reason })),
        metadata: new Uint8Array(),
      });
    }
    return { events, outputs: outputs(decided, orderId) };
  },
};
