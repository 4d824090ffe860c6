// {{name}}: a sluice handler. It turns a message `{"name": "Ada"}` into a
// greeting published to `greetings` (under the message's key) and a log
// line. sluice runs the outputs; the handler only describes them.
//
// The contract (wit/handler.wit) in JavaScript: bytes are Uint8Array, an
// option is a value or undefined, a variant is `{ tag, val }`, and an error
// result is thrown.

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export const handle = {
  handle(msg) {
    let name;
    try {
      name = JSON.parse(decoder.decode(msg.payload))?.name;
    } catch {
      name = undefined;
    }
    if (typeof name !== 'string' || name === '') {
      throw { tag: 'invalid-input', val: 'expected a JSON object with a name' };
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
