import {
  budgetText,
  clusterItems,
  commandMessage,
  functionDetails,
  nodeSeries,
  sparklinePoints,
  waitingText,
  emptyMessage,
  formatCost,
  formatMs,
  formatSaving,
  formatUsed,
  ISnapshot,
  parseSnapshot,
  statusText,
  statusTooltip,
  Throttler
} from '../src/model';

/** The example of DESIGN.md "Comm message schema". */
function designExample(): Record<string, any> {
  return {
    type: 'snapshot',
    version: 1,
    time: 1764230000.0,
    cluster: {
      address: 'local',
      nodes: 1,
      cpus: 2,
      cpus_used: 1,
      gpus: 0,
      gpus_used: 0
    },
    functions: [
      {
        name: 'square',
        invocations: 300,
        errors: 0,
        retries: 0,
        cold_starts: 1,
        in_flight: 0,
        queued: 0,
        replicas: 1,
        peak_replicas: 2,
        p50_ms: 0.8,
        p95_ms: 1.4,
        p99_ms: 3.0,
        cost: 0.00012,
        cost_idle: 0.00004,
        always_on_cost: 0.00031
      }
    ],
    totals: { invocations: 300, cost: 0.00012 }
  };
}

function parsed(data: unknown): ISnapshot {
  const r = parseSnapshot(data);
  if (!r.ok) {
    throw new Error(`rejected: ${r.error}`);
  }
  return r.snapshot;
}

describe('parseSnapshot', () => {
  it('accepts the DESIGN.md example', () => {
    const s = parsed(designExample());
    expect(s.time).toBe(1764230000.0);
    expect(s.version).toBe(1);
    expect(s.cluster).toEqual({
      address: 'local',
      nodes: 1,
      cpus: 2,
      cpus_used: 1,
      gpus: 0,
      gpus_used: 0,
      worker_nodes: null,
      nodes_pending: null,
      nodes_peak: null,
      autoscaling: null,
      node_cost: null,
      node_cost_always_on: null,
      node_history: []
    });
    expect(s.functions).toHaveLength(1);
    const f = s.functions[0];
    expect(f.name).toBe('square');
    expect(f.kind).toBe('function');
    expect(f.invocations).toBe(300);
    expect(f.replicas).toBe(1);
    expect(f.p50_ms).toBe(0.8);
    expect(f.p95_ms).toBe(1.4);
    expect(f.cost).toBe(0.00012);
    // saving = 1 - cost / always_on_cost when the kernel does not send it
    expect(f.saving).toBeCloseTo(1 - 0.00012 / 0.00031, 12);
    expect(s.totals.invocations).toBe(300);
    expect(s.totals.cost).toBe(0.00012);
    // replicas and errors are summed when totals lack them
    expect(s.totals.replicas).toBe(1);
    expect(s.totals.errors).toBe(0);
    expect(s.totals.saving).toBeCloseTo(1 - 0.00012 / 0.00031, 12);
  });

  it('prefers the saving and totals the kernel sends', () => {
    const d = designExample();
    d.functions[0].saving = 0.5;
    d.totals.replicas = 7;
    d.totals.saving = 0.25;
    const s = parsed(d);
    expect(s.functions[0].saving).toBe(0.5);
    expect(s.totals.replicas).toBe(7);
    expect(s.totals.saving).toBe(0.25);
  });

  it.each([
    [null, 'not an object'],
    ['snapshot', 'not an object'],
    [[1, 2], 'not an object'],
    [{ type: 'hello' }, 'unknown message type'],
    [{ version: 1, functions: [] }, 'unknown message type'],
    [
      { type: 'snapshot', version: 3, functions: [] },
      'unsupported snapshot version'
    ],
    [
      { type: 'snapshot', version: '2', functions: [] },
      'unsupported snapshot version'
    ],
    [{ type: 'snapshot', functions: [] }, 'unsupported snapshot version'],
    [{ type: 'snapshot', version: 1 }, 'functions is not a list'],
    [
      { type: 'snapshot', version: 1, functions: {} },
      'functions is not a list'
    ],
    [
      { type: 'snapshot', version: 1, functions: [{ invocations: 3 }] },
      'no name'
    ],
    [{ type: 'snapshot', version: 1, functions: [{ name: '' }] }, 'no name'],
    [{ type: 'snapshot', version: 1, functions: ['sq'] }, 'no name'],
    [{ type: 'snapshot', version: 1, functions: [], cluster: 3 }, 'cluster'],
    [{ type: 'snapshot', version: 1, functions: [], totals: [] }, 'totals']
  ])('rejects %j (%s)', (data, reason) => {
    const r = parseSnapshot(data);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error).toContain(reason);
    }
  });

  it('turns bad numbers into 0 or null without rejecting', () => {
    const d = designExample();
    Object.assign(d.functions[0], {
      invocations: 'many',
      errors: -3,
      replicas: 2.6,
      p50_ms: null,
      p95_ms: 'NaN',
      cost: undefined,
      always_on_cost: Infinity
    });
    d.cluster = { address: 7, nodes: null };
    d.totals = {};
    const s = parsed(d);
    const f = s.functions[0];
    expect(f.invocations).toBe(0);
    expect(f.errors).toBe(0);
    expect(f.replicas).toBe(3);
    expect(f.p50_ms).toBeNull();
    expect(f.p95_ms).toBeNull();
    expect(f.cost).toBe(0);
    expect(f.always_on_cost).toBeNull();
    expect(f.saving).toBeNull();
    expect(s.cluster.address).toBeNull();
    expect(s.cluster.nodes).toBe(0);
    expect(s.totals.invocations).toBe(0);
    expect(s.totals.replicas).toBe(3);
    expect(s.totals.saving).toBeNull();
  });

  it('never yields duplicate rows', () => {
    const d = designExample();
    d.functions = [
      { name: 'a', invocations: 1 },
      { name: 'b', invocations: 2 },
      { name: 'a', invocations: 5 }
    ];
    const s = parsed(d);
    expect(s.functions.map(f => [f.name, f.invocations])).toEqual([
      ['b', 2],
      ['a', 5]
    ]);
  });

  it('keeps the kind of cells and classes', () => {
    const d = designExample();
    d.functions = [
      { name: 'cell 3', kind: 'cell' },
      { name: 'Model', kind: 'class' }
    ];
    expect(parsed(d).functions.map(f => f.kind)).toEqual(['cell', 'class']);
  });

  it('does not share state between snapshots', () => {
    const a = parsed(designExample());
    const d = designExample();
    d.functions = [];
    d.totals = { invocations: 0, cost: 0 };
    const b = parsed(d);
    expect(b.functions).toEqual([]);
    expect(a.functions).toHaveLength(1);
  });
});

/** A version-2 snapshot: nodes in the cluster, a wait and a keep-alive per function. */
function v2Example(): Record<string, any> {
  const d = designExample();
  d.version = 2;
  Object.assign(d.cluster, {
    address: 'ray://head:10001',
    nodes: 3,
    worker_nodes: 2,
    nodes_pending: 1,
    nodes_peak: 4,
    autoscaling: true,
    node_cost: 0.0123,
    node_cost_always_on: 0.0456,
    node_history: [[1000, 1], [1040, 4], [1080, 3], [1090, 'x'], 'bad']
  });
  d.time = 1100;
  Object.assign(d.functions[0], {
    waiting_for_node: 2,
    waiting_for_node_s: 12,
    keep_alive: 'keep-alive 40 s (learned)'
  });
  return d;
}

describe('schema version 2', () => {
  it('parses the nodes and the node cost', () => {
    const s = parsed(v2Example());
    expect(s.version).toBe(2);
    expect(s.cluster).toMatchObject({
      nodes: 3,
      worker_nodes: 2,
      nodes_pending: 1,
      nodes_peak: 4,
      autoscaling: true,
      node_cost: 0.0123,
      node_cost_always_on: 0.0456
    });
    expect(s.cluster.node_history).toEqual([
      [1000, 1],
      [1040, 4],
      [1080, 3]
    ]);
    expect(clusterItems(s)).toEqual([
      ['Cluster', 'ray://head:10001'],
      ['Nodes (autoscaling)', '3 now · 1 pending · peak 4'],
      ['CPUs used', '1 / 2'],
      ['GPUs used', '0 / 0'],
      ['Node cost (est.)', '$0.012 (always-on $0.046)']
    ]);
  });

  it('says a function waits for a node, with the shared duration format', () => {
    const f = parsed(v2Example()).functions[0];
    expect(waitingText(f)).toBe('waiting for a node (12.0 s)');
    f.waiting_for_node_s = 75;
    expect(waitingText(f)).toBe('waiting for a node (1m15s)');
    f.waiting_for_node = 0;
    expect(waitingText(f)).toBe('');
  });

  it('puts the keep-alive and the wait in the row details', () => {
    const details = new Map(functionDetails(parsed(v2Example()).functions[0]));
    expect(details.get('Keep-alive')).toBe('keep-alive 40 s (learned)');
    expect(details.get('Waiting')).toBe('waiting for a node (12.0 s)');
  });

  it('reads a version-1 snapshot as before: no wait, no keep-alive, no node items', () => {
    const s = parsed(designExample());
    const f = s.functions[0];
    expect([f.waiting_for_node, f.waiting_for_node_s, f.keep_alive]).toEqual([
      0,
      0,
      null
    ]);
    expect(waitingText(f)).toBe('');
    const details = new Map(functionDetails(f));
    expect(details.get('Keep-alive')).toBe('–');
    expect(details.has('Waiting')).toBe(false);
    expect(clusterItems(s).map(([k]) => k)).toEqual([
      'Cluster',
      'Nodes',
      'CPUs used',
      'GPUs used'
    ]);
    expect(nodeSeries(s.cluster.node_history, s.time)).toEqual([]);
  });

  it('plots nodes over time at even time steps', () => {
    const s = parsed(v2Example());
    const series = nodeSeries(s.cluster.node_history, s.time, 11);
    // 1000..1100 in steps of 10: 1 until 1040, 4 until 1080, then 3
    expect(series).toEqual([1, 1, 1, 1, 4, 4, 4, 4, 3, 3, 3]);
    const ys = sparklinePoints(series, 100, 20)
      .split(' ')
      .map(p => Number(p.split(',')[1]));
    expect(ys).toHaveLength(11);
    expect(Math.min(...ys)).toBe(ys[4]); // the peak is the highest point
    expect(Math.max(...ys)).toBe(ys[0]);
  });
});

describe('formatting', () => {
  it('uses the shared formatter (tests/format_examples.json)', () => {
    expect(formatCost(0.0000381)).toBe('$0.000038');
    expect(formatCost(4e-8)).toBe('<$0.000001');
    expect(formatCost(0)).toBe('$0');
    expect(formatCost(1234.5)).toBe('$1,234.50');
    expect(formatCost(null)).toBe('–');
    expect(formatMs(0.8)).toBe('800 µs');
    expect(formatMs(1060)).toBe('1.06 s');
    expect(formatMs(null)).toBe('–');
    expect(formatSaving(0.734)).toBe('73%');
    expect(formatSaving(null)).toBe('–');
    expect(formatUsed(1, 2)).toBe('1 / 2');
    expect(formatUsed(0.5, 2)).toBe('0.5 / 2');
  });

  it('reads the budget and warns from 80 %', () => {
    const d = designExample();
    expect(parsed(d).budget).toBeNull();
    d.budget = { limit: 0.5, spent: 0.1, warn: false, exceeded: false };
    expect(budgetText(parsed(d).budget)).toBe('');
    d.budget = { limit: 0.5, spent: 0.41, warn: true, exceeded: false };
    const s = parsed(d);
    expect(budgetText(s.budget)).toBe(
      '82% of the budget spent ($0.41 of $0.50, estimate)'
    );
    s.totals.replicas = 1;
    expect(statusText('live', s)).toMatch(/⚠$/);
    d.budget = { limit: 0.5, spent: 0.5, warn: true, exceeded: true };
    expect(budgetText(parsed(d).budget)).toMatch(
      /^Budget spent: new calls are refused/
    );
  });

  it('builds command messages per DESIGN.md', () => {
    expect(commandMessage('scale_to_zero')).toEqual({
      type: 'command',
      command: 'scale_to_zero'
    });
  });
});

describe('status text', () => {
  it('shows replicas and estimated cost when live', () => {
    const d = designExample();
    d.totals = { invocations: 300, cost: 0.0031, replicas: 2 };
    const s = parsed(d);
    expect(statusText('live', s)).toBe('⚡ 2 replicas · $0.0031');
    expect(statusTooltip('live', s)).toContain('estimate');
    d.totals.replicas = 1;
    expect(statusText('live', parsed(d))).toBe('⚡ 1 replica · $0.0031');
  });

  it('has an empty state for each non-live state', () => {
    for (const state of [
      'no-notebook',
      'no-kernel',
      'dead',
      'not-loaded'
    ] as const) {
      expect(statusText(state, null)).toBe('⚡ –');
      expect(emptyMessage(state).length).toBeGreaterThan(10);
      expect(statusTooltip(state, null)).toContain(emptyMessage(state));
    }
    expect(emptyMessage('not-loaded')).toContain('%load_ext nbserverless');
  });
});

describe('Throttler', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('runs at once, then at most once per interval, always ending on the last call', () => {
    let now = 1000;
    let calls = 0;
    const t = new Throttler(
      () => calls++,
      250,
      () => now
    );
    t.invoke();
    expect(calls).toBe(1);
    // 100 invocations within the interval fold into one trailing call
    for (let i = 0; i < 100; i++) {
      now += 1;
      t.invoke();
    }
    expect(calls).toBe(1);
    now = 1250;
    jest.advanceTimersByTime(250);
    expect(calls).toBe(2);
    // nothing pending: no extra call
    jest.advanceTimersByTime(1000);
    expect(calls).toBe(2);
  });

  it('renders at most 4 times a second under a flood', () => {
    let calls = 0;
    const t = new Throttler(
      () => calls++,
      250,
      () => Date.now()
    );
    // 1000 messages a second for 2 s
    for (let ms = 0; ms < 2000; ms++) {
      t.invoke();
      jest.advanceTimersByTime(1);
    }
    jest.advanceTimersByTime(250);
    expect(calls).toBeGreaterThanOrEqual(8);
    expect(calls).toBeLessThanOrEqual(9);
  });

  it('drops a pending call when disposed', () => {
    let now = 0;
    let calls = 0;
    const t = new Throttler(
      () => calls++,
      250,
      () => now
    );
    t.invoke();
    now = 10;
    t.invoke();
    t.dispose();
    jest.advanceTimersByTime(1000);
    expect(calls).toBe(1);
  });
});
