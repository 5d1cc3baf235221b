/**
 * The status-bar item: replicas running and estimated cost of the active notebook's kernel.
 */
import { Widget } from '@lumino/widgets';

import { ServerlessTracker } from './connection';
import { statusText, statusTooltip } from './model';

/** The status item's DOM id (a stable hook for automation, SPEC.md). */
export const STATUS_ID = 'nbserverless-status';

export class ServerlessStatus extends Widget {
  constructor(
    private readonly tracker: ServerlessTracker,
    onClick: () => void
  ) {
    super();
    this.id = STATUS_ID;
    this.addClass('nbs-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', ev => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        onClick();
      }
    });
    tracker.changed.connect(() => this.render(), this);
    this.render();
  }

  render(): void {
    const state = this.tracker.state;
    const snapshot = this.tracker.snapshot;
    this.node.textContent = statusText(state, snapshot);
    this.node.title = statusTooltip(state, snapshot);
    this.node.dataset.state = state;
  }
}
