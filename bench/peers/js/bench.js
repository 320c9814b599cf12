// json-rules-engine on the peers benchmark's decision, driven by the Rust side one pass at a time
// (stdin: `check`, `mix`, `miss`; it ends when stdin closes; stdout: one line per request), so its passes are
// interleaved with the Rust engines' in the same run.
'use strict';
const fs = require('fs');
const readline = require('readline');
const { Engine } = require('json-rules-engine');

const pools = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

// First match: every rule has a priority (rule1 highest) and the engine stops at the first success.
function engine() {
  const e = new Engine([], { allowUndefinedFacts: true });
  const rule = (priority, label, all) =>
    e.addRule({ priority, conditions: { all }, event: { type: label },
      onSuccess: () => e.stop() });
  rule(4, 'coupon', [
    { fact: 'user', path: '$.register_days', operator: 'lessThan', value: 30 },
    { fact: 'user', path: '$.order_count', operator: 'equal', value: 0 },
    { fact: 'ml', path: '$.score', operator: 'lessThan', value: 0.3 },
    { fact: 'user', path: '$.country', operator: 'in', value: ['CN', 'HK'] },
  ]);
  rule(3, 'vip', [{ fact: 'order', path: '$.amount', operator: 'greaterThan', value: 1000 }]);
  rule(2, 'deny', [{ fact: 'user', path: '$.tags', operator: 'contains', value: 'blocked' }]);
  rule(1, 'review', [{ fact: 'ml', path: '$.score', operator: 'greaterThan', value: 0.9 }]);
  return e;
}

const e = engine();

async function decide(input) {
  const { events } = await e.run(input);
  return events.length ? events[0].type : 'none';
}

async function pass(name) {
  const { inputs } = pools[name];
  const t = process.hrtime.bigint();
  for (const input of inputs) await decide(input);
  return Number(process.hrtime.bigint() - t) / inputs.length;
}

async function check() {
  for (const [name, { inputs, answers }] of Object.entries(pools)) {
    for (let i = 0; i < inputs.length; i++) {
      const got = await decide(inputs[i]);
      if (got !== answers[i]) return `wrong on ${name}[${i}]: ${got}, the oracle says ${answers[i]}`;
    }
  }
  return 'ok: agrees with the oracle on every input';
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const cmd = line.trim();
  const answer = cmd === 'check' ? await check() : (await pass(cmd)).toFixed(0);
  process.stdout.write(answer + '\n');
});
