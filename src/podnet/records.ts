/** Attachment records as the dataplane sees them, and back. */
import type { PodAddress } from "../dataplane/pod-attachment.js";
import { formatIp, tryParseInterfaceAddress, tryParseIp } from "../net/ip.js";
import type { Attachment, AttachmentSpecRecord } from "../podipam/attachments.js";

export function recordAddresses(addresses: readonly PodAddress[]): AttachmentSpecRecord["addresses"] {
  return addresses.map((address) => ({ address: `${formatIp(address.address)}/${address.subnet.length}`, gateway: formatIp(address.gateway) }));
}

/** The addresses a record holds; entries that do not parse (hand edits) are skipped. */
export function recordedAddresses(attachment: Attachment): PodAddress[] {
  return attachment.spec.addresses.flatMap((entry) => {
    const parsed = tryParseInterfaceAddress(entry.address);
    const gateway = tryParseIp(entry.gateway);
    return parsed && gateway ? [{ address: parsed.address, subnet: parsed.prefix, gateway }] : [];
  });
}
