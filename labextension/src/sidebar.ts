/**
 * The "Serverless" side panel: per-function table, cluster summary, totals and the
 * "Scale to zero" / "Reset metrics" buttons for the active notebook's kernel.
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ServerlessTracker } from './connection';
import {
  Command,
  emptyMessage,
  formatCost,
  formatCount,
  formatMs,
  formatSaving,
  formatUsed,
  IFunctionStats,
  ISnapshot
} from './model';

/** The panel's DOM id (a stable hook for automation, SPEC.md). */
export const PANEL_ID = 'nbserverless-panel';

export const serverlessIcon = new LabIcon({
  name: 'nbserverless:bolt',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M13 2 4 14h7l-1 8 9-12h-7l1-8z"/></svg>'
});

/** The columns of the function table. */
const COLUMNS: {
  key: string;
  label: string;
  title: string;
  cell: (f: IFunctionStats) => string;
}[] = [
  {
    key: 'calls',
    label: 'Calls',
    title: 'Invocations finished',
    cell: f => formatCount(f.invocations)
  },
  {
    key: 'errors',
    label: 'Errors',
    title: 'Invocations that raised',
    cell: f => formatCount(f.errors)
  },
  {
    key: 'p50',
    label: 'p50',
    title: 'Median latency',
    cell: f => formatMs(f.p50_ms)
  },
  {
    key: 'p95',
    label: 'p95',
    title: '95th percentile latency',
    cell: f => formatMs(f.p95_ms)
  },
  {
    key: 'replicas',
    label: 'Repl.',
    title: 'Replicas running now (peak in the tooltip)',
    cell: f => `${f.replicas}`
  },
  {
    key: 'cost',
    label: 'Cost (est.)',
    title: 'Estimated cost (USD) from the price table: an estimate, not a bill',
    cell: f => formatCost(f.cost)
  },
  {
    key: 'saving',
    label: 'Saving',
    title:
      'Saving against an always-on server with the peak replicas: 1 − cost / always-on cost',
    cell: f => formatSaving(f.saving)
  }
];

/**
 * The side panel widget. It renders from the tracker's active link whenever the tracker
 * says so (throttled there).
 */
export class ServerlessPanel extends Widget {
  constructor(private readonly tracker: ServerlessTracker) {
    super();
    this.id = PANEL_ID;
    this.title.icon = serverlessIcon;
    this.title.caption = 'Serverless';
    this.addClass('nbs-panel');
    this.node.appendChild(Private.buildSkeleton(this));
    tracker.changed.connect(() => this.render(), this);
    this.render();
  }

  /** Run a command on the active kernel (used by the buttons). */
  sendCommand(command: Command): void {
    if (!this.tracker.send(command)) {
      console.warn(`nbserverless: no open comm for command ${command}`);
    }
  }

  /** Rebuild the view from the active link. */
  render(): void {
    const state = this.tracker.state;
    const snapshot = this.tracker.snapshot;
    const node = this.node;
    node.dataset.state = state;
    const q = (sel: string) => node.querySelector(sel) as HTMLElement;
    q('.nbs-notebook').textContent = this.tracker.activeTitle;
    const live = state === 'live' && snapshot !== null;
    q('.nbs-empty').textContent = live ? '' : emptyMessage(state);
    q('.nbs-empty').hidden = live;
    q('.nbs-body').hidden = !live;
    node.querySelectorAll('button.nbs-button').forEach(b => {
      (b as HTMLButtonElement).disabled = !live;
    });
    if (live) {
      Private.renderCluster(q('.nbs-cluster'), snapshot);
      Private.renderTable(
        node.querySelector('tbody') as HTMLTableSectionElement,
        snapshot
      );
      Private.renderTotals(
        node.querySelector('tfoot') as HTMLTableSectionElement,
        snapshot
      );
    } else {
      (node.querySelector('tbody') as HTMLElement).replaceChildren();
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.tracker.changed.disconnect(this.render, this);
    super.dispose();
  }
}

namespace Private {
  export function el<K extends keyof HTMLElementTagNameMap>(
    tag: K,
    cls?: string,
    text?: string
  ): HTMLElementTagNameMap[K] {
    const e = document.createElement(tag);
    if (cls) {
      e.className = cls;
    }
    if (text !== undefined) {
      e.textContent = text;
    }
    return e;
  }

  export function buildSkeleton(panel: ServerlessPanel): HTMLElement {
    const root = el('div', 'nbs-root');
    const header = el('div', 'nbs-header');
    header.append(
      el('h2', 'nbs-title', 'Serverless'),
      el('div', 'nbs-notebook')
    );
    root.append(header, el('div', 'nbs-empty'));

    const body = el('div', 'nbs-body');
    body.append(el('div', 'nbs-cluster'));

    const actions = el('div', 'nbs-actions');
    const buttons: [string, string, Command, string][] = [
      [
        'Scale to zero',
        'nbs-scale-to-zero',
        'scale_to_zero',
        'Remove every idle and warm replica of this kernel'
      ],
      [
        'Reset metrics',
        'nbs-reset',
        'reset',
        'Zero the counts and costs of this kernel'
      ]
    ];
    for (const [label, cls, command, title] of buttons) {
      const b = el('button', `nbs-button jp-mod-styled ${cls}`, label);
      b.title = title;
      b.dataset.command = command;
      b.addEventListener('click', () => panel.sendCommand(command));
      actions.append(b);
    }
    body.append(actions);

    const table = el('table', 'nbs-table');
    const head = el('tr');
    head.append(el('th', 'nbs-col-name', 'Function'));
    for (const c of COLUMNS) {
      const th = el('th', `nbs-col-${c.key}`, c.label);
      th.title = c.title;
      head.append(th);
    }
    table.append(el('thead'), el('tbody'), el('tfoot'));
    table.tHead!.append(head);
    body.append(table);
    body.append(
      el(
        'div',
        'nbs-note',
        'Costs are estimates from the price table in use, not a bill.'
      )
    );
    root.append(body);
    return root;
  }

  export function renderCluster(node: HTMLElement, s: ISnapshot): void {
    const c = s.cluster;
    const items: [string, string][] = [
      ['Cluster', c.address ?? 'not connected'],
      ['Nodes', `${c.nodes}`],
      ['CPUs used', formatUsed(c.cpus_used, c.cpus)],
      ['GPUs used', formatUsed(c.gpus_used, c.gpus)]
    ];
    const list = el('dl', 'nbs-cluster-list');
    for (const [k, v] of items) {
      const item = el('div', 'nbs-cluster-item');
      item.append(el('dt', undefined, k), el('dd', undefined, v));
      list.append(item);
    }
    node.replaceChildren(list);
  }

  export function renderTable(
    tbody: HTMLTableSectionElement,
    s: ISnapshot
  ): void {
    const rows: HTMLTableRowElement[] = [];
    for (const f of s.functions) {
      const tr = el('tr', 'nbs-row');
      tr.dataset.function = f.name;
      tr.dataset.kind = f.kind;
      const name = el('td', 'nbs-col-name', f.name);
      name.title = `${f.kind} ${f.name}: ${f.retries} retries, ${f.cold_starts} cold starts, ${f.in_flight} running, ${f.queued} queued`;
      if (f.kind === 'cell') {
        name.append(el('span', 'nbs-kind', 'cell'));
      }
      tr.append(name);
      for (const c of COLUMNS) {
        const td = el('td', `nbs-col-${c.key}`, c.cell(f));
        if (c.key === 'replicas') {
          td.title = `peak ${f.peak_replicas}`;
        } else if (c.key === 'saving' && f.always_on_cost !== null) {
          td.title = `always-on estimate ${formatCost(f.always_on_cost)}`;
        } else if (c.key === 'errors' && f.errors > 0) {
          td.classList.add('nbs-has-errors');
        }
        tr.append(td);
      }
      rows.push(tr);
    }
    if (rows.length === 0) {
      const tr = el('tr', 'nbs-row-empty');
      const td = el('td', undefined, 'No remote calls yet.');
      td.colSpan = COLUMNS.length + 1;
      tr.append(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  export function renderTotals(
    tfoot: HTMLTableSectionElement,
    s: ISnapshot
  ): void {
    const t = s.totals;
    const tr = el('tr', 'nbs-totals');
    const cells: [string, string][] = [
      ['name', 'Total'],
      ['calls', formatCount(t.invocations)],
      ['errors', formatCount(t.errors)],
      ['p50', ''],
      ['p95', ''],
      ['replicas', `${t.replicas}`],
      ['cost', formatCost(t.cost)],
      ['saving', formatSaving(t.saving)]
    ];
    for (const [key, text] of cells) {
      tr.append(el('td', `nbs-col-${key}`, text));
    }
    tfoot.replaceChildren(tr);
  }
}
