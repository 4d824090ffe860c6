"""The cancel rules, shared by cancel-order (the handler) and its decider
version, as in the Rust version (guests/cancel-order/src/rules.rs)."""

from dataclasses import dataclass
from typing import Optional

from contract import MISSING, format_float, info, invalid_input, is_number, parse_json, publish_json

OUTPUT_TOPIC = "order-events"
# A fraud score at or above this cancels the order.
FRAUD_THRESHOLD = 0.5


@dataclass
class Request:
    kind: Optional[str]
    order_id: Optional[str]
    score: Optional[float]


@dataclass
class Verdict:
    cancelled: bool
    reason: str


def _optional_text(request, field):
    value = request.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid_input(f"{field} is not a string")
    return value


def read_request(payload):
    """A cancel request, its fields checked for type; raises invalid-input."""
    request = parse_json(payload)
    if request is MISSING:
        raise invalid_input("not a cancel request: payload is not JSON")
    if not isinstance(request, dict):
        raise invalid_input("not a cancel request: payload is not a JSON object")
    kind = _optional_text(request, "type")
    order_id = _optional_text(request, "orderId")
    score = request.get("score")
    if score is not None and not is_number(score):
        raise invalid_input("score is not a number")
    return Request(kind, order_id, None if score is None else float(score))


def order_id_of(request):
    """The order id, which every request needs."""
    if request.order_id is None:
        raise invalid_input("missing orderId")
    return request.order_id


def verdict(request):
    """Whether the request cancels the order, by its type and score alone."""
    if request.kind is None:
        raise invalid_input("missing type")
    if request.kind == "CustomerCancelRequest":
        return Verdict(True, "customer-request")
    if request.kind == "UnfulfillableOrder":
        return Verdict(True, "unfulfillable")
    if request.kind == "FraudSuspected":
        score = request.score
        if score is None:
            raise invalid_input("FraudSuspected without score")
        if not 0.0 <= score <= 1.0:
            raise invalid_input(f"fraud score {format_float(score)} outside 0..1")
        if score >= FRAUD_THRESHOLD:
            return Verdict(True, "fraud-suspected")
        return Verdict(
            False,
            f"fraud score {format_float(score)} below threshold {format_float(FRAUD_THRESHOLD)}",
        )
    raise invalid_input(f'unknown cancel request type "{request.kind}"')


def outputs(decided, order_id):
    """What is published about the order: the event, then an info log."""
    kind = "OrderCancelled" if decided.cancelled else "OrderCancelFailed"
    return [
        publish_json(OUTPUT_TOPIC, order_id, {"type": kind, "orderId": order_id, "reason": decided.reason}),
        info(f"order {order_id}: {kind} ({decided.reason})"),
    ]
