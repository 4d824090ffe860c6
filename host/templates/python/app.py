"""{{name}}: a sluice handler. It turns a message {"name": "Ada"} into a
greeting published to `greetings` (under the message's key) and a log line.
sluice runs the outputs; the handler only describes them.

The contract (wit/handler.wit) in Python: bytes are bytes, an option is a
value or None, a variant case is a class (`types.Output_Publish(...)`), and an
error result is raised as `Err(...)`. `componentize-py -d wit -w handler
bindings .` writes the bindings out, to read or for an editor."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types


def name_in(payload):
    try:
        event = json.loads(payload.decode("utf-8"))
    except ValueError:
        return None
    name = event.get("name") if isinstance(event, dict) else None
    return name if isinstance(name, str) and name else None


class Handle(exports.Handle):
    def handle(self, msg):
        name = name_in(msg.payload)
        if name is None:
            raise Err(types.HandleError_InvalidInput("expected a JSON object with a name"))
        # Compact, as JSON.stringify and serde_json write it.
        greeting = json.dumps({"greeting": f"Hello, {name}!"}, separators=(",", ":"), ensure_ascii=False)
        return [
            types.Output_Publish(
                types.Publish(
                    "greetings",
                    msg.key,
                    greeting.encode("utf-8"),
                    [types.Header("content-type", b"application/json")],
                )
            ),
            types.Output_Log(types.LogEntry(types.LogLevel.INFO, f"greeted {name}")),
        ]
