// order-shipped-email in JavaScript: when an order ships, ask the email
// service to tell the customer. Means exactly what the Rust version
// (guests/order-shipped-email) means: tests/vectors/order-shipped-email.jsonl.

import {
  info,
  invalidInput,
  isObject,
  own,
  parseJson,
  publishJson,
  rejected,
} from '../shared/contract.js';

const OUTPUT_TOPIC = 'email-requests';
const MAX_QTY = 4294967295;

/** A field that may be absent or null, else must be a string. */
function optionalText(object, field, path) {
  const value = own(object, field);
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string') throw invalidInput(`${path} is not a string`);
  return value;
}


export const handle = {
  handle(msg) {
    const event = parseJson(msg.payload);
    if (event === undefined) throw invalidInput('not an order-shipped event: payload is not JSON');
    if (!isObject(event)) {
      throw invalidInput('not an order-shipped event: payload is not a JSON object');
    }
    const orderId = optionalText(event, 'orderId', 'orderId');
    if (orderId === null) throw invalidInput('missing orderId');
    let name = null;
    let email = null;
    const customer = own(event, 'customer');
    if (customer !== undefined && customer !== null) {
      if (!isObject(customer)) throw invalidInput('customer is not an object');
      name = optionalText(customer, 'name', 'customer.name');
      email = optionalText(customer, 'email', 'customer.email');
    }
    const carrier = optionalText(event, 'carrier', 'carrier');
    const tracking = optionalText(event, 'tracking', 'tracking');
    const items = own(event, 'items') ?? [];
    if (!Array.isArray(items)) throw invalidInput('items is not an array');
    let itemCount = 0;
    items.forEach((item, index) => {
      if (!isObject(item)) throw invalidInput(`items[${index}] is not an object`);
      const qty = own(item, 'qty');
      if (!Number.isInteger(qty) || qty < 0 || qty > MAX_QTY) {
        throw invalidInput(`items[${index}].qty is not a whole number from 0 to ${MAX_QTY}`);
      }
      itemCount += qty;
    });
    // Blank means ASCII whitespace only, as in the Rust version.
    if (email === null || email.replace(/^[ \t\n\f\r]+|[ \t\n\f\r]+$/g, '') === '') {
      throw rejected(`order ${orderId}: customer has no email`);
    }
    const request = {
      to: email,
      template: 'order-shipped',
      subject: `Your order ${orderId} has shipped`,
      vars: { name, orderId, carrier, tracking, itemCount },
    };
    return [
      publishJson(OUTPUT_TOPIC, orderId, request),
      info(`order ${orderId}: shipped email requested for ${email} (${itemCount} items)`),
    ];
  },
};
