/** `trellis agent`: the per-node daemon, in the foreground, logging JSON lines to stderr. */
import { Option, type Command } from "commander";
import { startAgent } from "../agent/agent.js";
import { jsonLogger } from "../agent/log.js";
import { AGENT_DEFAULTS, parseAgentOptions, type AgentFlags } from "../agent/options.js";
import { DEFAULT_STORE_SPEC } from "../store/open.js";

export function registerAgentCommand(program: Command): void {
  program
    .command("agent")
    .description("run the node agent: claim this node, route to every other node's pods, write the CNI config")
    .addOption(new Option("--node-name <name>", "this node's name (default: the host name)").env("TRELLIS_NODE_NAME"))
    .addOption(new Option("--zone <name>", "with the Trellis store: this node's zone (topology.kubernetes.io/zone), for Services' trafficDistribution").env("TRELLIS_ZONE"))
    .addOption(new Option("--node-ip <ip[,ip]>", "node addresses, one per family (default: those of the default route's interface)").env("TRELLIS_NODE_IP"))
    .addOption(new Option("--datastore <kind>", "where the cluster is kept: trellis (--store) or kubernetes (the API server)").env("TRELLIS_DATASTORE").default(AGENT_DEFAULTS.datastore))
    .addOption(new Option("--store <spec>", "cluster store: sqlite:PATH or etcd://HOST:PORT").env("TRELLIS_STORE").default(DEFAULT_STORE_SPEC))
    .addOption(new Option("--plan <file>", "cluster address plan; needed when the store has none yet").env("TRELLIS_PLAN"))
    .addOption(new Option("--kubeconfig <file>", "with --datastore kubernetes: the API server and credentials (default: the pod's ServiceAccount)").env("TRELLIS_KUBECONFIG"))
    .addOption(new Option("--cluster-cidr <cidr[,cidr]>", "with --datastore kubernetes: the cluster's pod CIDRs, one per family").env("TRELLIS_CLUSTER_CIDR"))
    .addOption(new Option("--mode <mode>", "direct, vxlan, or auto (direct to peers on a connected subnet, VXLAN to the others)").env("TRELLIS_MODE").default(AGENT_DEFAULTS.mode))
    .addOption(new Option("--mtu <bytes>", "the underlay MTU (default: the underlay interface's); pods get it less VXLAN's overhead").env("TRELLIS_MTU"))
    .addOption(new Option("--cni-conf-dir <dir>", "where the CNI config is written").env("TRELLIS_CNI_CONF_DIR").default(AGENT_DEFAULTS.cniConfDir))
    .addOption(new Option("--cni-data-dir <dir>", "the CNI plugin's state directory, named in the CNI config").env("TRELLIS_CNI_DATA_DIR").default(AGENT_DEFAULTS.cniDataDir))
    .addOption(new Option("--cni-socket <path>", "where the agent serves CNI calls for the native plugin (root only)").env("TRELLIS_CNI_SOCKET").default(AGENT_DEFAULTS.cniSocket))
    .addOption(new Option("--masquerade", "masquerade pod traffic leaving the cluster (default)").env("TRELLIS_MASQUERADE").default(true))
    .addOption(new Option("--no-masquerade", "leave pod traffic leaving the cluster with the pod's address"))
    .addOption(new Option("--resync-interval <seconds>", "full resync period").env("TRELLIS_RESYNC_INTERVAL").default(AGENT_DEFAULTS.resyncInterval))
    .addOption(new Option("--flow-buffer <records>", "flow records kept for /flows and `trellis flows` (0: none, no conntrack reader)").env("TRELLIS_FLOW_BUFFER").default(AGENT_DEFAULTS.flowBuffer))
    .addOption(new Option("--flow-events <events>", "conntrack's events flow records come from: new and any of update (first answered), destroy (ended, with counters)").env("TRELLIS_FLOW_EVENTS").default(AGENT_DEFAULTS.flowEvents))
    .addOption(new Option("--heartbeat-interval <seconds>", "how often the agent tells the store it is alive").env("TRELLIS_HEARTBEAT_INTERVAL").default(AGENT_DEFAULTS.heartbeatInterval))
    .addOption(new Option("--peer-grace <seconds>", "a peer whose heartbeat stops for this long loses its routes").env("TRELLIS_PEER_GRACE").default(AGENT_DEFAULTS.peerGrace))
    .addOption(new Option("--proxy", "implement Services with nftables (default)").env("TRELLIS_PROXY").default(true))
    .addOption(new Option("--no-proxy", "leave Services to another proxy"))
    .addOption(new Option("--proxy-sync-interval <seconds>", "least time between two syncs of the Service rules (0 for every change at once)").env("TRELLIS_PROXY_SYNC_INTERVAL").default(AGENT_DEFAULTS.proxySyncInterval))
    .addOption(new Option("--external-ip-cidrs <cidr[,cidr…]>", "where Services' externalIPs and load-balancer addresses may be (default: nowhere)").env("TRELLIS_EXTERNAL_IP_CIDRS"))
    .addOption(new Option("--metrics-bind-address <host:port>", "where /metrics, /healthz and /readyz are served over HTTP, or off").env("TRELLIS_METRICS_BIND_ADDRESS").default(AGENT_DEFAULTS.metricsBindAddress))
    .addOption(new Option("--proxy-healthz-bind-address <host:port>", "where kube-proxy's /healthz and /livez are served for the Service proxy (what load balancers' health checks ask; kube-proxy's is 0.0.0.0:10256), or off").env("TRELLIS_PROXY_HEALTHZ_BIND_ADDRESS").default(AGENT_DEFAULTS.proxyHealthzBindAddress))
    .addOption(new Option("--proxy-status-bind-address <host:port>", "where kube-proxy's /proxyMode is served (kube-proxy's is 127.0.0.1:10249), or off").env("TRELLIS_PROXY_STATUS_BIND_ADDRESS").default(AGENT_DEFAULTS.proxyStatusBindAddress))
    .addOption(new Option("--log-level <level>", "debug also logs every sync with its duration").env("TRELLIS_LOG_LEVEL").default(AGENT_DEFAULTS.logLevel))
    .action(async (flags: AgentFlags) => {
      const options = parseAgentOptions(flags);
      const log = jsonLogger(options.logLevel);
      const agent = await startAgent(options, log);
      const stop = (signal: string) => {
        log("info", "stopping", { signal });
        agent.stop();
      };
      process.once("SIGTERM", () => stop("SIGTERM"));
      process.once("SIGINT", () => stop("SIGINT"));
      await agent.done;
      log("info", "stopped");
    });
}
