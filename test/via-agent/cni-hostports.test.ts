/** ../cni-hostports.test.ts again, with every call through the native plugin and the node's agent. */
process.env.TRELLIS_CNI_VIA = "agent";
await import("../cni-hostports.test.js");
