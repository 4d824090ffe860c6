"""cancel-order in Python: decide whether a cancel request cancels the order,
by the request alone. Means exactly what the Rust version (guests/cancel-order)
means: tests/vectors/cancel-order.jsonl."""

from cancel_rules import order_id_of, outputs, read_request, verdict
from wit_world import exports


class Handle(exports.Handle):
    def handle(self, msg):
        request = read_request(msg.payload)
        order_id = order_id_of(request)
        return outputs(verdict(request), order_id)
