// A test guest with a bug: a payload `throw` makes it throw a plain Error
// (not a handle-error), `null` dereferences null; anything else is echoed.

export const handle = {
  handle(msg) {
    const text = new TextDecoder().decode(msg.payload);
    if (text === 'throw') throw new Error('boom in javascript');
    if (text === 'null') return null.outputs;
    return [{ tag: 'log', val: { level: 'info', text } }];
  },
};
