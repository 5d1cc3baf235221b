/**
 * The lab end of the `nbserverless` comm: one `KernelLink` per open notebook, and a
 * `ServerlessTracker` that follows the active notebook and tells the views to render
 * (throttled to a few times a second).
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  COMM_TARGET,
  Command,
  commandMessage,
  ISnapshot,
  LinkState,
  parseSnapshot,
  SCHEMA_VERSION,
  Throttler
} from './model';

/** Renders per second, at most. */
const RENDER_RATE = 4;

/**
 * The comm link to one notebook's kernel.
 *
 * The kernel opens a comm when `%load_ext nbserverless` runs; the lab registers the comm
 * target on every notebook's kernel connection so that comm is accepted. A lab that connects
 * to a kernel that already has the extension (page reload, kernel shared by another view)
 * finds the kernel's comms with `comm_info` and opens its own. A kernel restart or death
 * drops the comms and the snapshot; the table is replaced by each snapshot, never appended.
 */
export class KernelLink implements IDisposable {
  constructor(readonly sessionContext: ISessionContext) {
    sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    sessionContext.statusChanged.connect(this._onStatus, this);
    this._attach(sessionContext.session?.kernel ?? null);
  }

  /** Emitted whenever the state or the snapshot changed (not throttled). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get state(): LinkState {
    return this._state;
  }

  get snapshot(): ISnapshot | null {
    return this._snapshot;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Send a command to the kernel; false when there is no open comm. */
  send(command: Command): boolean {
    const comm = Private.last(this._comms);
    if (comm === null || comm.isDisposed) {
      return false;
    }
    comm.send(commandMessage(command));
    return true;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._detach();
    Signal.clearData(this);
  }

  private _onKernelChanged(
    _: ISessionContext,
    args: {
      oldValue: Kernel.IKernelConnection | null;
      newValue: Kernel.IKernelConnection | null;
    }
  ): void {
    this._detach();
    this._attach(args.newValue);
  }

  private _onStatus(_: ISessionContext, status: Kernel.Status): void {
    if (status === 'dead') {
      this._drop('dead');
    } else if (status === 'restarting' || status === 'autorestarting') {
      // a restarted kernel has none of the old comms and no extension loaded
      this._drop('not-loaded');
    } else if (this._state === 'dead' && this._kernel !== null) {
      this._set('not-loaded', null);
    }
  }

  private _attach(kernel: Kernel.IKernelConnection | null): void {
    this._kernel = kernel;
    if (kernel === null) {
      this._set(
        this.sessionContext.isDisposed ? 'no-kernel' : 'no-kernel',
        null
      );
      return;
    }
    if (!kernel.handleComms) {
      console.warn('nbserverless: kernel connection does not handle comms');
      this._set('not-loaded', null);
      return;
    }
    kernel.registerCommTarget(COMM_TARGET, this._onCommOpen);
    this._set(kernel.status === 'dead' ? 'dead' : 'not-loaded', null);
    void this._probe(kernel);
  }

  private _detach(): void {
    const kernel = this._kernel;
    this._kernel = null;
    for (const comm of this._comms) {
      comm.onMsg = () => undefined;
      comm.onClose = () => undefined;
    }
    this._comms = [];
    if (kernel !== null && !kernel.isDisposed && kernel.handleComms) {
      kernel.removeCommTarget(COMM_TARGET, this._onCommOpen);
    }
    this._set('no-kernel', null);
  }

  /** Is the extension loaded in this kernel already? Then open our own comm. */
  private async _probe(kernel: Kernel.IKernelConnection): Promise<void> {
    let reply: KernelMessage.ICommInfoReplyMsg;
    try {
      reply = await kernel.requestCommInfo({ target_name: COMM_TARGET });
    } catch (err) {
      console.debug('nbserverless: comm_info failed', err);
      return;
    }
    if (this._disposed || kernel !== this._kernel || this._comms.length > 0) {
      return;
    }
    const content = reply.content;
    if (content.status !== 'ok') {
      return;
    }
    const found = Object.values(content.comms).some(
      c => c.target_name === COMM_TARGET
    );
    if (!found) {
      return; // not loaded: wait for the kernel to open a comm on %load_ext
    }
    const comm = kernel.createComm(COMM_TARGET);
    this._adopt(comm);
    comm.open({
      type: 'hello',
      version: SCHEMA_VERSION,
      client: Private.clientKey(this.sessionContext.path)
    });
  }

  private _onCommOpen = (comm: Kernel.IComm): void => {
    if (this._disposed) {
      comm.close();
      return;
    }
    this._adopt(comm);
  };

  private _adopt(comm: Kernel.IComm): void {
    this._comms.push(comm);
    comm.onMsg = msg => this._onMsg(msg);
    comm.onClose = () => {
      this._comms = this._comms.filter(c => c !== comm);
      if (this._comms.length === 0 && this._state === 'live') {
        this._set('not-loaded', null); // %unload_ext, or the kernel closed it
      }
    };
  }

  private _onMsg(msg: KernelMessage.ICommMsgMsg): void {
    const result = parseSnapshot(msg.content.data);
    if (!result.ok) {
      console.warn(
        `nbserverless: ignored comm message (${result.error})`,
        msg.content.data
      );
      return;
    }
    this._set('live', result.snapshot);
  }

  /** Forget the comms (they died with the kernel process). */
  private _drop(state: LinkState): void {
    this._comms = [];
    this._set(state, null);
  }

  private _set(state: LinkState, snapshot: ISnapshot | null): void {
    this._state = state;
    this._snapshot = snapshot;
    if (!this._disposed) {
      this._changed.emit();
    }
  }

  private _kernel: Kernel.IKernelConnection | null = null;
  private _comms: Kernel.IComm[] = [];
  private _state: LinkState = 'no-kernel';
  private _snapshot: ISnapshot | null = null;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}

/**
 * Keeps a `KernelLink` for every open notebook and exposes the active one. `changed` is
 * throttled: views render at most `RENDER_RATE` times a second whatever the kernel sends.
 */
export class ServerlessTracker implements IDisposable {
  constructor(readonly notebooks: INotebookTracker) {
    this._throttle = new Throttler(
      () => this._changed.emit(),
      1000 / RENDER_RATE
    );
    notebooks.forEach(panel => this._add(panel));
    notebooks.widgetAdded.connect((_, panel) => this._add(panel), this);
    notebooks.currentChanged.connect(() => this._throttle.invoke(), this);
  }

  /** Throttled: the active notebook, its state or its snapshot changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The link of the active notebook, or null when no notebook is open. */
  get active(): KernelLink | null {
    const panel = this.notebooks.currentWidget;
    return panel ? (this._links.get(panel) ?? null) : null;
  }

  get state(): LinkState {
    const link = this.active;
    return link === null ? 'no-notebook' : link.state;
  }

  get snapshot(): ISnapshot | null {
    return this.active?.snapshot ?? null;
  }

  /** The title of the active notebook, for the panel header. */
  get activeTitle(): string {
    return this.notebooks.currentWidget?.title.label ?? '';
  }

  /** Send a command to the active notebook's kernel. */
  send(command: Command): boolean {
    return this.active?.send(command) ?? false;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._throttle.dispose();
    this._links.forEach(link => link.dispose());
    this._links.clear();
    Signal.clearData(this);
  }

  private _add(panel: NotebookPanel): void {
    if (this._links.has(panel)) {
      return;
    }
    const link = new KernelLink(panel.sessionContext);
    this._links.set(panel, link);
    link.changed.connect(() => {
      if (link === this.active) {
        this._throttle.invoke();
      }
    }, this);
    panel.disposed.connect(() => {
      this._links.delete(panel);
      link.dispose();
      this._throttle.invoke();
    }, this);
    this._throttle.invoke();
  }

  private _links = new Map<NotebookPanel, KernelLink>();
  private _throttle: Throttler;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}

namespace Private {
  export function last<T>(items: T[]): T | null {
    return items.length ? items[items.length - 1] : null;
  }

  let tabId: string | null = null;

  /**
   * A key for this browser tab and notebook that survives a page reload (sessionStorage is
   * per tab), so the kernel can close the comm the tab had opened before the reload.
   */
  export function clientKey(path: string): string {
    if (tabId === null) {
      const storageKey = 'nbserverless:tab-id';
      try {
        tabId = window.sessionStorage.getItem(storageKey);
        if (!tabId) {
          tabId = Math.random().toString(36).slice(2);
          window.sessionStorage.setItem(storageKey, tabId);
        }
      } catch {
        tabId = Math.random().toString(36).slice(2);
      }
    }
    return `${tabId}:${path}`;
  }
}
