/**
 * The "Serverless" side panel: per-function table, cluster summary, totals and the
 * "Scale to zero" / "Reset metrics" buttons for the active notebook's kernel.
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ServerlessTracker } from './connection';
import {
  budgetText,
  clusterItems,
  Command,
  emptyMessage,
  formatCost,
  formatCount,
  formatMs,
  formatSaving,
  functionDetails,
  IFunctionStats,
  ISnapshot,
  nodeSeries,
  sparklinePoints,
  waitingText
} from './model';

/** The panel's DOM id (a stable hook for automation, SPEC.md). */
export const PANEL_ID = 'nbserverless-panel';

export const serverlessIcon = new LabIcon({
  name: 'nbserverless:bolt',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M13 2 4 14h7l-1 8 9-12h-7l1-8z"/></svg>'
});

/**
 * The columns of the function table: five, so that they fit the side bar at its default
 * width. Everything else is in the row's tooltip and in its details (click the row).
 */
const COLUMNS: {
  key: string;
  label: string;
  title: string;
  cell: (f: IFunctionStats) => string;
}[] = [
  {
    key: 'calls',
    label: 'Calls',
    title: 'Invocations finished (errors and cancellations in the row details)',
    cell: f => formatCount(f.invocations)
  },
  {
    key: 'p50',
    label: 'p50',
    title:
      'Median time the function ran on its replica; the end-to-end median (with queueing and start-up) is in the row details',
    cell: f => formatMs(f.invocations ? (f.exec_p50_ms ?? f.p50_ms) : null)
  },
  {
    key: 'replicas',
    label: 'Replicas',
    title: 'Replicas running now (peak in the row details)',
    cell: f => formatCount(f.replicas)
  },
  {
    key: 'cost',
    label: 'Cost',
    title:
      'Estimated cost (USD) from the price table, idle keep-alive included: an estimate, not a bill',
    cell: f => formatCost(f.cost)
  }
];

export { functionDetails } from './model';

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
    const budget = q('.nbs-budget');
    budget.textContent = live ? budgetText(snapshot.budget) : '';
    budget.hidden = !live || budget.textContent === '';
    if (live) {
      Private.renderCluster(q('.nbs-cluster'), snapshot);
      Private.renderTable(
        node.querySelector('tbody') as HTMLTableSectionElement,
        snapshot,
        this.expanded,
        () => this.render()
      );
      Private.renderTotals(
        node.querySelector('tfoot') as HTMLTableSectionElement,
        snapshot
      );
    } else {
      (node.querySelector('tbody') as HTMLElement).replaceChildren();
    }
  }

  /** Functions whose details row is open (clicking a row toggles it). */
  readonly expanded = new Set<string>();

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
    const budget = el('div', 'nbs-budget');
    budget.setAttribute('role', 'alert');
    body.append(budget, el('div', 'nbs-cluster'));

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
        'Costs are estimates from the price table in use, not a bill. Click a row for its details.'
      )
    );
    root.append(body);
    return root;
  }

  export function renderCluster(node: HTMLElement, s: ISnapshot): void {
    const list = el('dl', 'nbs-cluster-list');
    for (const [k, v] of clusterItems(s)) {
      // the nodes and the node cost read better on one line across the panel
      const wide = k.startsWith('Node');
      const item = el(
        'div',
        `nbs-cluster-item${wide ? ' nbs-cluster-wide' : ''}`
      );
      item.append(el('dt', undefined, k), el('dd', undefined, v));
      list.append(item);
    }
    const children: Node[] = [list];
    const series = nodeSeries(s.cluster.node_history, s.time);
    if (series.length > 0) {
      children.push(nodePlot(series));
    }
    node.replaceChildren(...children);
  }

  /** A small plot of the node count over time (like the dashboard's). */
  export function nodePlot(series: number[]): HTMLElement {
    const [w, h] = [160, 24];
    const wrap = el('div', 'nbs-node-plot');
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('width', `${w}`);
    svg.setAttribute('height', `${h}`);
    svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', 'nodes over time');
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', sparklinePoints(series, w, h));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', 'var(--jp-brand-color1)');
    line.setAttribute('stroke-width', '1.5');
    svg.append(line);
    wrap.append(el('span', 'nbs-node-plot-label', 'nodes over time'), svg);
    wrap.title = `Nodes over time: now ${series[series.length - 1]}, peak ${Math.max(...series)}`;
    return wrap;
  }

  export function renderTable(
    tbody: HTMLTableSectionElement,
    s: ISnapshot,
    expanded: Set<string>,
    rerender: () => void
  ): void {
    const rows: HTMLTableRowElement[] = [];
    for (const f of s.functions) {
      const tr = el('tr', 'nbs-row');
      tr.dataset.function = f.name;
      tr.dataset.kind = f.kind;
      const details = functionDetails(f);
      tr.title =
        `${f.name}\n` + details.map(([k, v]) => `${k}: ${v}`).join('\n');
      const open = expanded.has(f.name);
      tr.setAttribute('aria-expanded', open ? 'true' : 'false');
      tr.addEventListener('click', () => {
        if (!expanded.delete(f.name)) {
          expanded.add(f.name);
        }
        rerender();
      });
      const name = el('td', 'nbs-col-name', f.name);
      if (f.kind === 'cell') {
        name.append(el('span', 'nbs-kind', 'cell'));
      }
      if (f.errors > 0) {
        const badge = el(
          'span',
          'nbs-errors nbs-has-errors',
          `${formatCount(f.errors)}✗`
        );
        badge.title = `${formatCount(f.errors)} errors`;
        name.append(badge);
      }
      const wait = waitingText(f);
      if (wait) {
        name.append(el('span', 'nbs-waiting', wait)); // its own line, after the badges
      }
      tr.append(name);
      for (const c of COLUMNS) {
        tr.append(el('td', `nbs-col-${c.key}`, c.cell(f)));
      }
      rows.push(tr);
      if (open) {
        const more = el('tr', 'nbs-details');
        more.dataset.detailsFor = f.name;
        const td = el('td');
        td.colSpan = COLUMNS.length + 1;
        const dl = el('dl', 'nbs-details-list');
        for (const [k, v] of details) {
          dl.append(el('dt', undefined, k), el('dd', undefined, v));
        }
        td.append(dl);
        more.append(td);
        rows.push(more);
      }
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
    tr.title = `Errors: ${formatCount(t.errors)}\nSaving against always-on: ${formatSaving(t.saving)}`;
    const cells: [string, string][] = [
      ['name', 'Total'],
      ['calls', formatCount(t.invocations)],
      ['p50', ''],
      ['replicas', formatCount(t.replicas)],
      ['cost', formatCost(t.cost)]
    ];
    for (const [key, text] of cells) {
      tr.append(el('td', `nbs-col-${key}`, text));
    }
    tfoot.replaceChildren(tr);
  }
}
