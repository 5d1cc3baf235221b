import * as fs from 'fs';
import * as path from 'path';

import * as format from '../src/format';

/** The table both formatters are tested against (tests/test_format.py reads it too). */
const EXAMPLES: Record<string, [number | null, string][]> = JSON.parse(
  fs.readFileSync(
    path.join(__dirname, '..', '..', 'tests', 'format_examples.json'),
    'utf8'
  )
);

type Formatter = (v: number | null) => string;
const FORMATTERS: Record<string, Formatter> = {
  money: format.money,
  ms: format.ms,
  seconds: format.seconds,
  count: format.count,
  percent: format.percent
};

describe('the shared table of examples', () => {
  const kinds = Object.keys(EXAMPLES).filter(k => !k.startsWith('_'));
  it('covers every formatter', () => {
    expect(kinds.sort()).toEqual(Object.keys(FORMATTERS).sort());
  });
  for (const kind of kinds) {
    for (const [value, want] of EXAMPLES[kind]) {
      it(`${kind}(${value}) is ${want}`, () => {
        expect(FORMATTERS[kind](value)).toBe(want);
      });
    }
  }
});

describe('rules', () => {
  it('never writes scientific notation', () => {
    for (let exp = -12; exp <= 6; exp++) {
      for (const m of [1, 2.5, 3.81, 9.99]) {
        const v = m * Math.pow(10, exp);
        for (const f of Object.values(FORMATTERS)) {
          expect(f(v)).not.toMatch(/\de[-+]?\d/);
        }
      }
    }
  });
  it('shows no data as a dash, not zero', () => {
    expect(format.ms(null)).toBe('–');
    expect(format.ms(NaN)).toBe('–');
    expect(format.money(undefined)).toBe('–');
  });
});
