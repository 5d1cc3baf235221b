/**
 * Command ids of the nbserverless lab extension.
 */
export namespace CommandIDs {
  /** Open (activate) the Serverless side panel. */
  export const openPanel = 'nbserverless:open-panel';

  /** Remove every idle and warm replica of the active notebook's kernel. */
  export const scaleToZero = 'nbserverless:scale-to-zero';

  /** Zero the metrics of the active notebook's kernel. */
  export const resetMetrics = 'nbserverless:reset-metrics';

  /** Ask the active notebook's kernel for a snapshot now. */
  export const refresh = 'nbserverless:refresh';
}
