/** CNI error codes (spec §"Error") and the error the plugin's verbs throw. */

export const CniCode = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnvironment: 4,
  ioFailure: 5,
  decodeFailure: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  notAvailable: 50,
  limitedConnectivity: 51,
  /** Trellis's own codes start at 100. */
  rangeExhausted: 100,
  addressUnavailable: 101,
  duplicateAttachment: 102,
  dataplaneFailure: 103,
  stateFailure: 104,
  checkFailed: 105,
  delegateFailure: 106,
  internal: 999,
} as const;

export class CniError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly details = "",
  ) {
    super(message);
  }
}

/** The JSON a failing plugin prints on stdout. */
export function formatCniError(error: CniError, cniVersion: string): string {
  return JSON.stringify({ cniVersion, code: error.code, msg: error.message, details: error.details || undefined });
}
