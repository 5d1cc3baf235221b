/**
 * nbserverless JupyterLab extension: the "Serverless" side panel and status-bar item.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { CommandIDs } from './commands';
import { ServerlessTracker } from './connection';
import { Command } from './model';
import { PANEL_ID, ServerlessPanel, serverlessIcon } from './sidebar';
import { ServerlessStatus, STATUS_ID } from './statusbar';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbserverless:plugin',
  description:
    'Live calls, latency, replicas and estimated cost of the active notebook’s serverless functions.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, IStatusBar, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    restorer: ILayoutRestorer | null,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null
  ) => {
    const tracker = new ServerlessTracker(notebooks);
    const panel = new ServerlessPanel(tracker);
    app.shell.add(panel, 'right', { rank: 200 });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    app.commands.addCommand(CommandIDs.openPanel, {
      label: 'Open the Serverless panel',
      icon: serverlessIcon,
      execute: () => app.shell.activateById(PANEL_ID)
    });
    Private.addKernelCommand(
      app,
      tracker,
      CommandIDs.scaleToZero,
      'Serverless: scale to zero',
      'scale_to_zero'
    );
    Private.addKernelCommand(
      app,
      tracker,
      CommandIDs.resetMetrics,
      'Serverless: reset metrics',
      'reset'
    );
    Private.addKernelCommand(
      app,
      tracker,
      CommandIDs.refresh,
      'Serverless: refresh',
      'refresh'
    );
    if (palette) {
      const category = 'Serverless';
      for (const command of [
        CommandIDs.openPanel,
        CommandIDs.scaleToZero,
        CommandIDs.resetMetrics,
        CommandIDs.refresh
      ]) {
        palette.addItem({ command, category });
      }
    }

    if (statusBar) {
      const item = new ServerlessStatus(tracker, () => {
        void app.commands.execute(CommandIDs.openPanel);
      });
      statusBar.registerStatusItem(STATUS_ID, {
        item,
        align: 'left',
        rank: 100,
        isActive: () => true
      });
    }
  }
};

namespace Private {
  export function addKernelCommand(
    app: JupyterFrontEnd,
    tracker: ServerlessTracker,
    id: string,
    label: string,
    command: Command
  ): void {
    app.commands.addCommand(id, {
      label,
      isEnabled: () => tracker.state === 'live',
      execute: () => {
        tracker.send(command);
      }
    });
    tracker.changed.connect(() => app.commands.notifyCommandChanged(id));
  }
}

export default plugin;
