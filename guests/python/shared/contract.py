"""What every Python shop handler needs to behave byte for byte like the Rust
reference (the guests under guests/<name>/, checked by tests/vectors/*.jsonl):
JSON read and written the way serde_json does, numbers printed the way Rust
prints them, and the contract's shapes."""

import json
import math
import re
from decimal import Decimal

from componentize_py_types import Err
from wit_world.imports import types

# serde_json refuses documents nested deeper than this (its limit of 128
# counts down to zero).
MAX_DEPTH = 127


class NotJson(Exception):
    pass


def _refuse_constant(name):
    # Python reads NaN and Infinity; JSON (and serde_json) does not.
    raise NotJson(name)


def _float(text):
    value = float(text)
    if math.isinf(value):
        raise NotJson(text)
    return value


def _int(text):
    value = int(text)
    # serde_json reads "-0" as the float -0.0, and integers too large for
    # 64 bits as floats, refusing them past the float range.
    if value == 0 and text.startswith("-"):
        return -0.0
    float(value)
    return value


# What json.loads reads and serde_json refuses (numbers out of range are
# refused by _float and _int, for every value): a lone surrogate escape
# ("\ud800") and nesting deeper than MAX_DEPTH. Either may hide in a value
# json.loads drops unseen (the earlier of two equal keys), so the text is
# what is checked, and only a text that could hold one: a surrogate escape,
# more than MAX_DEPTH brackets. The bracket count is matched at the start
# only: searched from every position, it took time quadratic in the text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_MANY_BRACKETS = re.compile(r"(?:[^\[{]*[\[{]){%d}" % (MAX_DEPTH + 1))
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _serde_reads(text):
    """Whether serde_json reads `text`, which json.loads read: every string
    and bracket, every value included."""
    depth = 0
    for token in _TOKEN.finditer(text):
        token = token.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif token in ("]", "}"):
            depth -= 1
        elif "\\u" in token and not _well_formed(json.loads(token)):
            return False
    return True


def _well_formed(text):
    """Whether `text` holds no lone surrogate."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# What parse_json gives for a payload that is not JSON (None is JSON null).
MISSING = object()


def parse_json(payload):
    """The payload as JSON, or `MISSING` when serde_json would refuse it."""
    try:
        text = payload.decode("utf-8")
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_float,
            parse_int=_int,
        )
        suspect = _SURROGATE_ESCAPE.search(text) or _MANY_BRACKETS.match(text)
        if suspect and not _serde_reads(text):
            return MISSING
    except (ValueError, NotJson, OverflowError, RecursionError):
        return MISSING
    return value


def is_number(value):
    """A JSON number (bool is an int to Python, not to JSON)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole_number(value, low, high):
    """`value` as an int when it is a number with no fraction in low..=high."""
    if not is_number(value) or (isinstance(value, float) and not value.is_integer()):
        return None
    return int(value) if low <= value <= high else None


def format_float(x):
    """A number as Rust's `Display` for f64 writes it: never an exponent."""
    text = format(Decimal(repr(float(x))), "f")
    return text[:-2] if text.endswith(".0") else text


def to_json(value):
    """Compact JSON as serde_json writes it: no spaces, no \\u escapes for
    non-ASCII."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def invalid_input(detail):
    return Err(types.HandleError_InvalidInput(detail))


def rejected(detail):
    return Err(types.HandleError_Rejected(detail))


def publish_json(topic, key, body):
    """A `publish` output of `body` as JSON, keyed by `key`."""
    return types.Output_Publish(
        types.Publish(
            topic,
            key.encode("utf-8"),
            to_json(body),
            [types.Header("content-type", b"application/json")],
        )
    )


def info(text):
    return types.Output_Log(types.LogEntry(types.LogLevel.INFO, text))


def schedule(timer_id, due, output):
    """A `schedule` output (contract 0.4): publish `output`'s record (made by
    `publish_json`) at `due`, milliseconds since the Unix epoch, computed
    from the message (its `timestamp`), never from a clock. Scheduling a
    pending `timer_id` again replaces it."""
    return types.Output_Schedule(types.Schedule(timer_id, due, output.value))


def cancel(timer_id):
    """A `cancel` output (contract 0.4): the pending timer never fires."""
    return types.Output_Cancel(timer_id)
