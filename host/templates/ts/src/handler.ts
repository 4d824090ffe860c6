// {{name}}: a sluice handler. It turns a message `{"name": "Ada"}` into a
// greeting published to `greetings` (under the message's key) and a log
// line. sluice runs the outputs; the handler only describes them.

import type { Handle, HandleError, Message, Output } from './sluice.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function nameIn(payload: Uint8Array): string | undefined {
  try {
    const name: unknown = JSON.parse(decoder.decode(payload))?.name;
    return typeof name === 'string' && name !== '' ? name : undefined;
  } catch {
    return undefined;
  }
}

export const handle: Handle = {
  handle(msg: Message): Output[] {
    const name = nameIn(msg.payload);
    if (name === undefined) {
      const invalid: HandleError = { tag: 'invalid-input', val: 'expected a JSON object with a name' };
      throw invalid;
    }
    return [
      {
        tag: 'publish',
        val: {
          topic: 'greetings',
          key: msg.key,
          payload: encoder.encode(JSON.stringify({ greeting: `Hello, ${name}!` })),
          headers: [{ name: 'content-type', value: encoder.encode('application/json') }],
        },
      },
      { tag: 'log', val: { level: 'info', text: `greeted ${name}` } },
    ];
  },
};
