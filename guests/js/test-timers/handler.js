// A test guest: guests/test-timers in JavaScript (the same commands, the
// same outputs), so that a test can check the contract helpers' `schedule`
// and `cancel` against the Rust build.

import { bytes, cancel, invalidInput, schedule } from '../shared/contract.js';

const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The line's first four words and the rest, as Rust's `splitn(5, ' ')`. */
function words(line) {
  const parts = [];
  let rest = line;
  while (parts.length < 4) {
    const space = rest.indexOf(' ');
    if (space < 0) break;
    parts.push(rest.slice(0, space));
    rest = rest.slice(space + 1);
  }
  parts.push(rest);
  return parts;
}

export const handle = {
  handle(msg) {
    let text;
    try {
      text = decoder.decode(msg.payload);
    } catch {
      throw invalidInput('not UTF-8');
    }
    const lines = text.split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    return lines.map((line) => {
      const invalid = invalidInput(`cannot read ${JSON.stringify(line)}`);
      const [command, id, time, topic, payload] = words(line);
      if (command === 'cancel') {
        if (id === undefined) throw invalid;
        return cancel(id);
      }
      if ((command !== 'schedule' && command !== 'at') || topic === undefined) throw invalid;
      if (!/^[0-9]+$/.test(time)) throw invalid;
      const due = command === 'schedule' ? msg.timestamp + BigInt(time) : BigInt(time);
      const output = {
        tag: 'publish',
        val: {
          topic,
          key: msg.key,
          payload: bytes(payload ?? ''),
          headers: [{ name: 'scheduled-at-offset', value: bytes(msg.offset.toString()) }],
        },
      };
      return schedule(id, due, output);
    });
  },
};
