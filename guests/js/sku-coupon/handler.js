// sku-coupon in JavaScript, a decider: every SKU is a stream of events
// (`sku-<sku>`), and a coupon applies to a SKU at most once, and only while
// the SKU is in the assortment. Means exactly what the Rust version
// (guests/sku-coupon) means: tests/vectors/sku-coupon.jsonl.

import { bytes, info, invalidInput, isObject, own, parseJson, publishJson } from '../shared/contract.js';

const OUTPUT_TOPIC = 'sku-events';
const KINDS = ['AddToAssortment', 'RemoveFromAssortment', 'ApplyCoupon'];

function read(msg) {
  const command = parseJson(msg.payload);
  if (command === undefined) throw invalidInput('not a SKU command: payload is not JSON');
  if (!isObject(command)) throw invalidInput('not a SKU command: payload is not a JSON object');
  const text = (field) => {
    const value = own(command, field);
    if (typeof value !== 'string') throw invalidInput(`not a SKU command: ${field} is not a string`);
    return value;
  };
  const type = own(command, 'type');
  if (!KINDS.includes(type)) {
    throw invalidInput(
      'not a SKU command: type is not AddToAssortment, RemoveFromAssortment or ApplyCoupon',
    );
  }
  const sku = text('sku');
  if (sku === '') throw invalidInput('empty sku');
  if (type !== 'ApplyCoupon') return { type, sku };
  const coupon = text('coupon');
  const percent = own(command, 'percent');
  if (coupon === '' || !Number.isInteger(percent) || percent < 1 || percent > 100) {
    throw invalidInput('ApplyCoupon needs a coupon code and a percent from 1 to 100');
  }
  return { type, sku, coupon, percent };
}

// The state, `{inAssortment, coupons: {code: percent}}`; only this version
// reads it.
function load(state) {
  return JSON.parse(new TextDecoder().decode(state));
}

function save(state) {
  return bytes(JSON.stringify(state));
}

function event(type, data) {
  return { type, data: bytes(JSON.stringify(data)), metadata: new Uint8Array() };
}

// Published bodies list their keys in sorted order, as the Rust version's do.
export const decide = {
  streamId(msg) {
    return `sku-${read(msg).sku}`;
  },

  initial() {
    return save({ inAssortment: false, coupons: {} });
  },

  fold(state, events) {
    const sku = load(state);
    for (const e of events) {
      if (e.type === 'SkuAddedToAssortment') sku.inAssortment = true;
      else if (e.type === 'SkuRemovedFromAssortment') sku.inAssortment = false;
      else if (e.type === 'CouponApplied') {
        const data = parseJson(e.data);
        if (isObject(data)) {
          const coupon = own(data, 'coupon');
          const percent = own(data, 'percent');
          if (typeof coupon === 'string' && Number.isInteger(percent) && percent >= 0 && percent <= 4294967295) {
            // Defined, not assigned: a coupon called `__proto__` is a coupon.
            Object.defineProperty(sku.coupons, coupon, {
              value: percent,
              enumerable: true,
              writable: true,
              configurable: true,
            });
          }
        }
      }
      // Events of kinds this version does not know change nothing.
    }
    return save(sku);
  },

  decide(msg, state) {
    const current = load(state);
    const command = read(msg);
    const { sku } = command;
    const events = [];
    const outputs = [];
    if (command.type === 'AddToAssortment' && !current.inAssortment) {
      events.push(event('SkuAddedToAssortment', {}));
      outputs.push(publishJson(OUTPUT_TOPIC, sku, { sku, type: 'SkuAddedToAssortment' }));
    } else if (command.type === 'RemoveFromAssortment' && current.inAssortment) {
      events.push(event('SkuRemovedFromAssortment', {}));
      outputs.push(publishJson(OUTPUT_TOPIC, sku, { sku, type: 'SkuRemovedFromAssortment' }));
    } else if (command.type === 'ApplyCoupon') {
      const { coupon, percent } = command;
      let reason = null;
      if (!current.inAssortment) reason = 'not-in-assortment';
      else if (Object.hasOwn(current.coupons, coupon)) reason = 'already-applied';
      if (reason !== null) {
        outputs.push(publishJson(OUTPUT_TOPIC, sku, { coupon, reason, sku, type: 'CouponRejected' }));
        outputs.push(info(`${sku}: coupon ${coupon} rejected (${reason})`));
      } else {
        events.push(event('CouponApplied', { coupon, percent }));
        outputs.push(publishJson(OUTPUT_TOPIC, sku, { coupon, percent, sku, type: 'CouponApplied' }));
        outputs.push(info(`${sku}: coupon ${coupon} applied (${percent}% off)`));
      }
    }
    // Adding what is there, or removing what is not: nothing happens.
    return { events, outputs };
  },
};
