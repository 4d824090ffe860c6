"""A test guest: guests/test-timers in Python (the same commands, the same
outputs), so that a test can check the contract helpers' `schedule` and
`cancel` against the Rust build."""

from contract import cancel, invalid_input, schedule
from wit_world import exports
from wit_world.imports import types


class Handle(exports.Handle):
    def handle(self, msg):
        try:
            text = msg.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_input("not UTF-8")
        outputs = []
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for line in lines:
            words = line.split(" ", 4)
            command = words[0]
            if command == "cancel" and len(words) >= 2:
                outputs.append(cancel(words[1]))
                continue
            readable = len(words) >= 4 and words[2].isascii() and words[2].isdigit()
            if command not in ("schedule", "at") or not readable:
                raise invalid_input(f"cannot read {line!r}")
            time = int(words[2])
            due = msg.timestamp + time if command == "schedule" else time
            payload = words[4] if len(words) == 5 else ""
            output = types.Output_Publish(
                types.Publish(
                    words[3],
                    msg.key,
                    payload.encode("utf-8"),
                    [types.Header("scheduled-at-offset", str(msg.offset).encode("utf-8"))],
                )
            )
            outputs.append(schedule(words[1], due, output))
        return outputs
