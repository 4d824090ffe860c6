"""cancel-order 0.2.0 in Python, a decider over the order's stream
(`order-<orderId>`): an order is cancelled at most once. Means exactly what the
Rust version (guests/cancel-order-decider) means:
tests/vectors/cancel-order-decider.jsonl."""

import json

from cancel_rules import Verdict, order_id_of, outputs, read_request, verdict
from contract import parse_json, to_json
from wit_world import exports
from wit_world.imports import types

# The state: why the order was cancelled, or null. Only this version reads it.


class Decide(exports.Decide):
    def stream_id(self, msg):
        return f"order-{order_id_of(read_request(msg.payload))}"

    def initial(self):
        return to_json({"cancelled": None})

    def fold(self, state, events):
        order = json.loads(state)
        for event in events:
            if event.type != "OrderCancelled" or order["cancelled"] is not None:
                continue
            data = parse_json(event.data)
            if isinstance(data, dict) and isinstance(data.get("reason"), str):
                order["cancelled"] = data["reason"]
        return to_json(order)

    def decide(self, msg, state):
        order = json.loads(state)
        request = read_request(msg.payload)
        order_id = order_id_of(request)
        decided = verdict(request)
        events = []
        if order["cancelled"] is not None:
            decided = Verdict(False, f"already cancelled ({order['cancelled']})")
        elif decided.cancelled:
            events.append(types.Event("OrderCancelled", to_json({"reason": decided.reason}), b""))
        return types.Decision(events, outputs(decided, order_id))
