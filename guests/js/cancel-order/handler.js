// cancel-order in JavaScript: decide whether a cancel request cancels the
// order, by the request alone. Means exactly what the Rust version
// (guests/cancel-order) means: tests/vectors/cancel-order.jsonl.

import { orderIdOf, outputs, readRequest, verdict } from '../shared/cancel-rules.js';

export const handle = {
  handle(msg) {
    const request = readRequest(msg.payload);
    const orderId = orderIdOf(request);
    return outputs(verdict(request), orderId);
  },
};
