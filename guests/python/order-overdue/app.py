"""order-overdue in Python: raise OrderOverdue for an order not shipped in
time, through one timer per order. Means exactly what the Rust version
(guests/order-overdue) means: tests/vectors/order-overdue.jsonl."""

from contract import (
    MISSING,
    cancel,
    info,
    invalid_input,
    parse_json,
    publish_json,
    schedule,
    whole_number,
)
from wit_world import exports

OUTPUT_TOPIC = "order-alerts"
# The longest deadline an event may set: a year.
MAX_WITHIN_SECONDS = 31536000
MAX_TIME = 2**64 - 1


def text(event, field):
    """A required, non-empty string field."""
    value = event.get(field)
    if value is None:
        raise invalid_input(f"missing {field}")
    if not isinstance(value, str):
        raise invalid_input(f"{field} is not a string")
    if value == "":
        raise invalid_input(f"{field} is empty")
    return value


class Handle(exports.Handle):
    def handle(self, msg):
        event = parse_json(msg.payload)
        if event is MISSING:
            raise invalid_input("not an order event: payload is not JSON")
        if not isinstance(event, dict):
            raise invalid_input("not an order event: payload is not a JSON object")
        kind = text(event, "type")
        order_id = text(event, "orderId")
        if kind in ("OrderPlaced", "ShipmentDelayed"):
            within = whole_number(event.get("shipWithinSeconds"), 1, MAX_WITHIN_SECONDS)
            if within is None:
                raise invalid_input(
                    f"shipWithinSeconds is not a whole number from 1 to {MAX_WITHIN_SECONDS}"
                )
            # From the message's time, never a clock: a replay gives the same
            # due time, and a later event replaces the timer.
            due = msg.timestamp + within * 1000
            if due > MAX_TIME:
                raise invalid_input("the deadline is past the largest time")
            alert = {
                "type": "OrderOverdue",
                "orderId": order_id,
                "after": kind,
                "withinSeconds": within,
            }
            return [
                schedule(order_id, due, publish_json(OUTPUT_TOPIC, order_id, alert)),
                info(f"order {order_id}: overdue unless shipped within {within} s of {kind}"),
            ]
        if kind in ("OrderShipped", "OrderCancelled"):
            return [cancel(order_id), info(f"order {order_id}: {kind}, no longer overdue")]
        raise invalid_input(f'unknown order event type "{kind}"')
