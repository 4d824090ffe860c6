"""sku-coupon in Python, a decider: every SKU is a stream of events
(`sku-<sku>`), and a coupon applies to a SKU at most once, and only while the
SKU is in the assortment. Means exactly what the Rust version
(guests/sku-coupon) means: tests/vectors/sku-coupon.jsonl."""

import json

from contract import MISSING, info, invalid_input, parse_json, publish_json, to_json, whole_number
from wit_world import exports
from wit_world.imports import types

OUTPUT_TOPIC = "sku-events"
KINDS = ("AddToAssortment", "RemoveFromAssortment", "ApplyCoupon")


def read(msg):
    command = parse_json(msg.payload)
    if command is MISSING:
        raise invalid_input("not a SKU command: payload is not JSON")
    if not isinstance(command, dict):
        raise invalid_input("not a SKU command: payload is not a JSON object")

    def text(field):
        value = command.get(field)
        if not isinstance(value, str):
            raise invalid_input(f"not a SKU command: {field} is not a string")
        return value

    kind = command.get("type")
    if not isinstance(kind, str) or kind not in KINDS:
        raise invalid_input(
            "not a SKU command: type is not AddToAssortment, RemoveFromAssortment or ApplyCoupon"
        )
    sku = text("sku")
    if not sku:
        raise invalid_input("empty sku")
    if kind != "ApplyCoupon":
        return {"type": kind, "sku": sku}
    coupon = text("coupon")
    percent = whole_number(command.get("percent"), 1, 100)
    if not coupon or percent is None:
        raise invalid_input("ApplyCoupon needs a coupon code and a percent from 1 to 100")
    return {"type": kind, "sku": sku, "coupon": coupon, "percent": percent}


def event(kind, data):
    return types.Event(kind, to_json(data), b"")


def published(sku, body):
    # Keys sorted, as the Rust version's bodies have them.
    return publish_json(OUTPUT_TOPIC, sku, dict(sorted(body.items())))


# The state, {"inAssortment", "coupons": {code: percent}}; only this version
# reads it.
class Decide(exports.Decide):
    def stream_id(self, msg):
        return f"sku-{read(msg)['sku']}"

    def initial(self):
        return to_json({"inAssortment": False, "coupons": {}})

    def fold(self, state, events):
        sku = json.loads(state)
        for e in events:
            if e.type == "SkuAddedToAssortment":
                sku["inAssortment"] = True
            elif e.type == "SkuRemovedFromAssortment":
                sku["inAssortment"] = False
            elif e.type == "CouponApplied":
                data = parse_json(e.data)
                if isinstance(data, dict) and isinstance(data.get("coupon"), str):
                    percent = whole_number(data.get("percent"), 0, 4294967295)
                    if percent is not None:
                        sku["coupons"][data["coupon"]] = percent
            # Events of kinds this version does not know change nothing.
        return to_json(sku)

    def decide(self, msg, state):
        current = json.loads(state)
        command = read(msg)
        sku = command["sku"]
        events = []
        outputs = []
        kind = command["type"]
        if kind == "AddToAssortment" and not current["inAssortment"]:
            events.append(event("SkuAddedToAssortment", {}))
            outputs.append(published(sku, {"type": "SkuAddedToAssortment", "sku": sku}))
        elif kind == "RemoveFromAssortment" and current["inAssortment"]:
            events.append(event("SkuRemovedFromAssortment", {}))
            outputs.append(published(sku, {"type": "SkuRemovedFromAssortment", "sku": sku}))
        elif kind == "ApplyCoupon":
            coupon, percent = command["coupon"], command["percent"]
            if not current["inAssortment"]:
                reason = "not-in-assortment"
            elif coupon in current["coupons"]:
                reason = "already-applied"
            else:
                reason = None
            if reason is not None:
                body = {"type": "CouponRejected", "sku": sku, "coupon": coupon, "reason": reason}
                outputs.append(published(sku, body))
                outputs.append(info(f"{sku}: coupon {coupon} rejected ({reason})"))
            else:
                events.append(event("CouponApplied", {"coupon": coupon, "percent": percent}))
                body = {"type": "CouponApplied", "sku": sku, "coupon": coupon, "percent": percent}
                outputs.append(published(sku, body))
                outputs.append(info(f"{sku}: coupon {coupon} applied ({percent}% off)"))
        # Adding what is there, or removing what is not: nothing happens.
        return types.Decision(events, outputs)
