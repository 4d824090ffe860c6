// The cancel rules, shared by cancel-order (the handler) and its decider
// version, as in the Rust version (guests/cancel-order/src/rules.rs).

import { formatFloat, info, invalidInput, isObject, own, parseJson, publishJson } from './contract.js';

const OUTPUT_TOPIC = 'order-events';
/** A fraud score at or above this cancels the order. */
const FRAUD_THRESHOLD = 0.5;

function optionalText(request, field) {
  const value = own(request, field);
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string') throw invalidInput(`${field} is not a string`);
  return value;
}

/** A cancel request, its fields checked for type; throws `invalid-input`. */
export function readRequest(payload) {
  const request = parseJson(payload);
  if (request === undefined) throw invalidInput('not a cancel request: payload is not JSON');
  if (!isObject(request)) throw invalidInput('not a cancel request: payload is not a JSON object');
  const kind = optionalText(request, 'type');
  const orderId = optionalText(request, 'orderId');
  let score = own(request, 'score');
  if (score === undefined) score = null;
  if (score !== null && typeof score !== 'number') throw invalidInput('score is not a number');
  return { kind, orderId, score };
}

/** The order id, which every request needs. */
export function orderIdOf(request) {
  if (request.orderId === null) throw invalidInput('missing orderId');
  return request.orderId;
}

/** `{cancelled: true|false, reason}`, by the request's type and score alone. */
export function verdict(request) {
  if (request.kind === null) throw invalidInput('missing type');
  switch (request.kind) {
    case 'CustomerCancelRequest':
      return { cancelled: true, reason: 'customer-request' };
    case 'UnfulfillableOrder':
      return { cancelled: true, reason: 'unfulfillable' };
    case 'FraudSuspected': {
      const { score } = request;
      if (score === null) throw invalidInput('FraudSuspected without score');
      if (!(score >= 0 && score <= 1)) {
        throw invalidInput(`fraud score ${formatFloat(score)} outside 0..1`);
      }
      if (score >= FRAUD_THRESHOLD) return { cancelled: true, reason: 'fraud-suspected' };
      return {
        cancelled: false,
        reason: `fraud score ${formatFloat(score)} below threshold ${formatFloat(FRAUD_THRESHOLD)}`,
      };
    }
    default:
      throw invalidInput(`unknown cancel request type "${request.kind}"`);
  }
}

/** What is published about the order: the event, then an `info` log. */
export function outputs({ cancelled, reason }, orderId) {
  const type = cancelled ? 'OrderCancelled' : 'OrderCancelFailed';
  return [
    publishJson(OUTPUT_TOPIC, orderId, { type, orderId, reason }),
    info(`order ${orderId}: ${type} (${reason})`),
  ];
}
