import test from 'ava';
import { benchOptions, type OptionSpec } from '../../bench/common.js';

const SPEC = {
  rounds: { type: 'number', default: 7, help: 'rounds' },
  rates: { type: 'numbers', default: [250, 500], help: 'rates' },
  tool: { type: 'string', default: 'wrk', choices: ['wrk', 'autocannon'], help: 'tool' },
  'no-rt': { type: 'flag', help: 'no real-time' },
} satisfies Record<string, OptionSpec>;

test('benchOptions: defaults unless given, --name V and --name=V, comma lists, flags', (t) => {
  t.deepEqual(benchOptions('bench', 'about', SPEC, []), {
    rounds: 7,
    rates: [250, 500],
    tool: 'wrk',
    'no-rt': false,
  });
  t.deepEqual(
    benchOptions('bench', 'about', SPEC, ['--rounds', '2.5', '--rates=0', '--tool', 'autocannon', '--no-rt']),
    {
      rounds: 2.5,
      rates: [0],
      tool: 'autocannon',
      'no-rt': true,
    },
  );
});
