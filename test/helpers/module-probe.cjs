// Preloaded with `node --require` into a sidecar process by a test: records
// every module resolved (require and import alike) whose URL contains
// MODULE_PROBE_MATCH, and writes the list to MODULE_PROBE_OUT at exit.
'use strict';
const { registerHooks } = require('node:module');
const { writeFileSync } = require('node:fs');

const match = process.env.MODULE_PROBE_MATCH ?? '';
const out = process.env.MODULE_PROBE_OUT;
const seen = new Set();
registerHooks({
  resolve(specifier, context, nextResolve) {
    const resolved = nextResolve(specifier, context);
    if (resolved.url.includes(match)) seen.add(resolved.url);
    return resolved;
  },
});
process.on('exit', () => {
  if (out) writeFileSync(out, JSON.stringify([...seen]));
});
