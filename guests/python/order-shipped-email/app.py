"""order-shipped-email in Python: when an order ships, ask the email service
to tell the customer. Means exactly what the Rust version
(guests/order-shipped-email) means: tests/vectors/order-shipped-email.jsonl."""

from contract import MISSING, info, invalid_input, parse_json, publish_json, rejected, whole_number
from wit_world import exports

OUTPUT_TOPIC = "email-requests"
MAX_QTY = 4294967295
# Blank means ASCII whitespace only, as in the Rust version.
ASCII_WHITESPACE = " \t\n\f\r"


def optional_text(obj, field, path):
    """A field that may be absent or null, else must be a string."""
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid_input(f"{path} is not a string")
    return value


class Handle(exports.Handle):
    def handle(self, msg):
        event = parse_json(msg.payload)
        if event is MISSING:
            raise invalid_input("not an order-shipped event: payload is not JSON")
        if not isinstance(event, dict):
            raise invalid_input("not an order-shipped event: payload is not a JSON object")
        order_id = optional_text(event, "orderId", "orderId")
        if order_id is None:
            raise invalid_input("missing orderId")
        name = email = None
        customer = event.get("customer")
        if customer is not None:
            if not isinstance(customer, dict):
                raise invalid_input("customer is not an object")
            name = optional_text(customer, "name", "customer.name")
            email = optional_text(customer, "email", "customer.email")
        carrier = optional_text(event, "carrier", "carrier")
        tracking = optional_text(event, "tracking", "tracking")
        items = event.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise invalid_input("items is not an array")
        item_count = 0
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise invalid_input(f"items[{index}] is not an object")
            qty = whole_number(item.get("qty"), 0, MAX_QTY)
            if qty is None:
                raise invalid_input(
                    f"items[{index}].qty is not a whole number from 0 to {MAX_QTY}"
                )
            item_count += qty
        if email is None or not email.strip(ASCII_WHITESPACE):
            raise rejected(f"order {order_id}: customer has no email")
        request = {
            "to": email,
            "template": "order-shipped",
            "subject": f"Your order {order_id} has shipped",
            "vars": {
                "name": name,
                "orderId": order_id,
                "carrier": carrier,
                "tracking": tracking,
                "itemCount": item_count,
            },
        }
        return [
            publish_json(OUTPUT_TOPIC, order_id, request),
            info(f"order {order_id}: shipped email requested for {email} ({item_count} items)"),
        ]
