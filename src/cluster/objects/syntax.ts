/**
 * Kubernetes' syntax checks for names, labels, ports and IPs (k8s.io/apimachinery's
 * util/validation and core validation), each returning the apiserver's messages, none when
 * the value is fine. The messages are Kubernetes' word for word, quirks included, so a user
 * can search for them.
 */
import { parsePrefix, prefixContains, tryParseIp, type IpAddress } from "../../net/ip.js";

const dns1123LabelFmt = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const dns1123SubdomainFmt = `${dns1123LabelFmt}(\\.${dns1123LabelFmt})*`;
const dns1035LabelFmt = "[a-z]([-a-z0-9]*[a-z0-9])?";
const qualifiedNameFmt = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const labelValueFmt = `(${qualifiedNameFmt})?`;

const dns1123Label = anchored(dns1123LabelFmt);
const dns1123Subdomain = anchored(dns1123SubdomainFmt);
const dns1035Label = anchored(dns1035LabelFmt);
const qualifiedName = anchored(qualifiedNameFmt);
const labelValue = anchored(labelValueFmt);

function anchored(format: string): RegExp {
  return new RegExp(`^${format}$`);
}

function maxLenError(length: number): string {
  return `must be no more than ${length} characters`;
}

/** validation.RegexError, with its double space before " or " kept. */
function regexError(message: string, format: string, ...examples: string[]): string {
  if (examples.length === 0) return `${message} (regex used for validation is '${format}')`;
  return `${message} (e.g. ${examples.map((example) => `'${example}', `).join(" or ")}regex used for validation is '${format}')`;
}

/** Namespaces, Service port names, container names, hostnames. */
export function isDns1123Label(value: string): string[] {
  const errors: string[] = [];
  if (value.length > 63) errors.push(maxLenError(63));
  if (!dns1123Label.test(value)) {
    if (dns1123Subdomain.test(value)) errors.push("must not contain dots");
    else {
      errors.push(regexError(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        dns1123LabelFmt, "my-name", "123-abc",
      ));
    }
  }
  return errors;
}

/** Pod, EndpointSlice and Node names. */
export function isDns1123Subdomain(value: string): string[] {
  const errors: string[] = [];
  if (value.length > 253) errors.push(maxLenError(253));
  if (!dns1123Subdomain.test(value)) {
    errors.push(regexError(
      "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
      dns1123SubdomainFmt, "example.com",
    ));
  }
  return errors;
}

/** Service names: they become DNS labels, so they start with a letter. */
export function isDns1035Label(value: string): string[] {
  const errors: string[] = [];
  if (value.length > 63) errors.push(maxLenError(63));
  if (!dns1035Label.test(value)) {
    errors.push(regexError(
      "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
      dns1035LabelFmt, "my-name", "abc-123",
    ));
  }
  return errors;
}

const qualifiedNameErrMsg = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/** Label keys, annotation keys and appProtocol: an optional DNS subdomain prefix and "/", then a name of at most 63. */
export function isQualifiedName(value: string): string[] {
  const errors: string[] = [];
  const parts = value.split("/");
  let name: string;
  if (parts.length === 1) name = parts[0];
  else if (parts.length === 2) {
    const prefix = parts[0];
    name = parts[1];
    if (prefix.length === 0) errors.push("prefix part must be non-empty");
    else errors.push(...isDns1123Subdomain(prefix).map((message) => `prefix part ${message}`));
  } else {
    return [
      `a qualified name ${regexError(qualifiedNameErrMsg, qualifiedNameFmt, "MyName", "my.name", "123-abc")} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')`,
    ];
  }
  if (name.length === 0) errors.push("name part must be non-empty");
  else if (name.length > 63) errors.push(`name part ${maxLenError(63)}`);
  if (!qualifiedName.test(name)) errors.push(`name part ${regexError(qualifiedNameErrMsg, qualifiedNameFmt, "MyName", "my.name", "123-abc")}`);
  return errors;
}

export function isValidLabelValue(value: string): string[] {
  const errors: string[] = [];
  if (value.length > 63) errors.push(maxLenError(63));
  if (!labelValue.test(value)) {
    errors.push(regexError(
      "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
      labelValueFmt, "MyValue", "my_value", "12345",
    ));
  }
  return errors;
}

/** A zone name (topology.kubernetes.io/zone) as another party wrote it: a non-empty label value, else none. */
export function zoneName(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" && isValidLabelValue(value).length === 0 ? value : undefined;
}

/** IANA_SVC_NAME (RFC 6335): container port names and named targetPorts. */
export function isValidPortName(value: string): string[] {
  const errors: string[] = [];
  if (value.length > 15) errors.push(maxLenError(15));
  if (!/^[-a-z0-9]+$/.test(value)) errors.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
  if (!/[a-z]/.test(value)) errors.push("must contain at least one letter (a-z)");
  if (value.includes("--")) errors.push("must not contain consecutive hyphens");
  if (value.startsWith("-") || value.endsWith("-")) errors.push("must not begin or end with a hyphen");
  return errors;
}

export function isValidPortNum(port: number): string[] {
  return port >= 1 && port <= 65535 ? [] : ["must be between 1 and 65535, inclusive"];
}

const sloppyIpv4 = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/;
const ipv4Mapped = parsePrefix("::ffff:0:0/96");

/**
 * An IP address as the apiserver's strict check sees it. Trellis parses only canonical
 * decimal octets (net/ip.ts), so a leading zero, which Go's legacy parser would take, is
 * named as the problem rather than called "not an IP".
 */
export function ipProblems(text: string): string[] {
  const ip = tryParseIp(text);
  if (ip) return ip.family === 6 && prefixContains(ipv4Mapped, ip) ? ["must not be an IPv4-mapped IPv6 address"] : [];
  const octets = sloppyIpv4.exec(text);
  if (octets && octets.slice(1).every((octet) => Number(octet) <= 255)) return ["must not have leading 0s"];
  return ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"];
}

const loopback = { 4: parsePrefix("127.0.0.0/8"), 6: parsePrefix("::1/128") };
const linkLocal = { 4: parsePrefix("169.254.0.0/16"), 6: parsePrefix("fe80::/10") };
const linkLocalMulticast4 = parsePrefix("224.0.0.0/24");

/**
 * ValidateNonSpecialIP / ValidateEndpointIP: addresses that make no sense as a Service's
 * external IP or an endpoint. Go's IsLinkLocalMulticast matches ffX2::/16 for IPv6, though its
 * message says ff02::/10.
 */
export function specialIpProblems(ip: IpAddress, text: string): string[] {
  const errors: string[] = [];
  if (ip.value === 0n) errors.push(`may not be unspecified (${text})`);
  if (prefixContains(loopback[ip.family], ip)) errors.push("may not be in the loopback range (127.0.0.0/8, ::1/128)");
  if (prefixContains(linkLocal[ip.family], ip)) errors.push("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
  const linkLocalMulticast = ip.family === 4 ? prefixContains(linkLocalMulticast4, ip) : ((ip.value >> 112n) & 0xff0fn) === 0xff02n;
  if (linkLocalMulticast) errors.push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)");
  return errors;
}
