"""A test guest with a bug: a payload `throw` raises KeyError (not an Err);
anything else is echoed."""

from wit_world import exports
from wit_world.imports import types


class Handle(exports.Handle):
    def handle(self, msg):
        if msg.payload == b"throw":
            raise KeyError("boom in python")
        return [types.Output_Log(types.LogEntry(types.LogLevel.INFO, msg.payload.decode()))]
