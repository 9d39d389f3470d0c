/**
 * The Kubernetes objects Trellis stores and accepts, in Kubernetes' own JSON shape and field
 * names: the subset of v1 Service, discovery.k8s.io/v1 EndpointSlice and v1 Pod that a network
 * plugin reads. Optional fields are absent rather than empty, as the apiserver writes them.
 * Values of these types come from `normalize*` in validate.ts (defaults applied, validated) or
 * from the EndpointSlice controller.
 */
import type { IpFamilyName, IpFamilyPolicy } from "../service-ips-families.js";

export type { IpFamilyName, IpFamilyPolicy };

export const PROTOCOLS = ["SCTP", "TCP", "UDP"] as const;
export type Protocol = (typeof PROTOCOLS)[number];
export const IP_FAMILY_NAMES: readonly IpFamilyName[] = ["IPv4", "IPv6"];
/** An integer port or an IANA_SVC_NAME naming a container port, as Kubernetes' IntOrString. */
export type IntOrString = number | string;
export type StringMap = Readonly<Record<string, string>>;

export interface ObjectMeta {
  readonly name: string;
  /** "default" when the manifest gives none, as kubectl does. */
  readonly namespace: string;
  readonly labels?: StringMap;
  readonly annotations?: StringMap;
  readonly uid?: string;
  readonly resourceVersion?: string;
  readonly creationTimestamp?: string;
  /** Set while the object is being deleted (a terminating Pod). */
  readonly deletionTimestamp?: string;
}

/** A cluster-scoped object's metadata: no namespace. */
export type ClusterObjectMeta = Omit<ObjectMeta, "namespace">;

export interface ObjectReference {
  readonly kind: string;
  readonly namespace?: string;
  readonly name: string;
  readonly uid?: string;
}

// ---- v1 Service --------------------------------------------------------------------------

/** ExternalName is refused: it is a DNS alias that no network plugin proxies. */
export type ServiceType = "ClusterIP" | "NodePort" | "LoadBalancer";
export type SessionAffinity = "None" | "ClientIP";
export type TrafficPolicy = "Cluster" | "Local";

export interface ServicePort {
  /** Required when the Service has more than one port; a DNS-1123 label. */
  readonly name?: string;
  readonly protocol: Protocol;
  readonly port: number;
  /** Defaults to `port`. */
  readonly targetPort: IntOrString;
  /** Absent until the allocator assigns one (types NodePort and LoadBalancer). */
  readonly nodePort?: number;
  readonly appProtocol?: string;
}

export interface ServiceSpec {
  readonly type: ServiceType;
  /** "None" for a headless Service; absent until allocated. Always equal to clusterIPs[0]. */
  readonly clusterIP?: string;
  readonly clusterIPs?: readonly string[];
  /** Absent until the allocator resolves them against the cluster plan. */
  readonly ipFamilies?: readonly IpFamilyName[];
  readonly ipFamilyPolicy: IpFamilyPolicy;
  readonly ports: readonly ServicePort[];
  /** Absent or empty: the Service has no managed endpoints (its slices are written by hand). */
  readonly selector?: StringMap;
  readonly externalIPs?: readonly string[];
  readonly sessionAffinity: SessionAffinity;
  /** Present exactly when sessionAffinity is ClientIP. */
  readonly sessionAffinityConfig?: { readonly clientIP: { readonly timeoutSeconds: number } };
  /** Present exactly when the Service is reachable from outside: NodePort, LoadBalancer, or externalIPs. */
  readonly externalTrafficPolicy?: TrafficPolicy;
  readonly internalTrafficPolicy: TrafficPolicy;
  /** Where traffic should stay: the EndpointSlice controller writes it into the slices as hints. */
  readonly trafficDistribution?: TrafficDistribution;
  /** Only for type LoadBalancer with externalTrafficPolicy Local; absent until allocated. */
  readonly healthCheckNodePort?: number;
  /** Present exactly for type LoadBalancer (default true). */
  readonly allocateLoadBalancerNodePorts?: boolean;
  readonly publishNotReadyAddresses: boolean;
}

export interface LoadBalancerIngress {
  readonly ip?: string;
  readonly hostname?: string;
  /**
   * VIP (the default with an ip): the load balancer delivers packets still addressed to `ip`,
   * so nodes answer on it themselves. Proxy: it delivers them to the node's address, so `ip`
   * is the load balancer's own and traffic to it from inside the cluster must go out to it.
   */
  readonly ipMode?: "VIP" | "Proxy";
}

export interface ServiceStatus {
  readonly loadBalancer?: { readonly ingress?: readonly LoadBalancerIngress[] };
}

export interface Service {
  readonly apiVersion: "v1";
  readonly kind: "Service";
  readonly metadata: ObjectMeta;
  readonly spec: ServiceSpec;
  readonly status?: ServiceStatus;
}

// ---- discovery.k8s.io/v1 EndpointSlice ----------------------------------------------------

/** FQDN is refused: a network plugin cannot program a name. */
export const ADDRESS_TYPES = ["IPv4", "IPv6"] as const;
export type AddressType = (typeof ADDRESS_TYPES)[number];

/** The label naming the Service a slice belongs to. */
export const LABEL_SERVICE_NAME = "kubernetes.io/service-name";
/** The label naming the controller that owns a slice. */
export const LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by";
/** Set on the slices of a Service without a ClusterIP; on a Service, it tells every proxy to leave it alone. */
export const LABEL_HEADLESS = "service.kubernetes.io/headless";
/** On a Service, the proxy that implements it: the default proxy (Trellis's, or kube-proxy) leaves it alone. */
export const LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name";

/**
 * Always explicit after normalizing: the API leaves them optional and documents an absent
 * ready as true, an absent serving as equal to ready and an absent terminating as false;
 * normalizing writes those meanings down so no consumer has to remember them.
 */
export interface EndpointConditions {
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
}

export interface Endpoint {
  /** One to 100 addresses of the slice's addressType; consumers use the first. */
  readonly addresses: readonly string[];
  readonly conditions: EndpointConditions;
  readonly hostname?: string;
  readonly nodeName?: string;
  readonly zone?: string;
  /** Where the endpoint should be used (the EndpointSlice controller's, for trafficDistribution); proxies read them. */
  readonly hints?: EndpointHints;
  readonly targetRef?: ObjectReference;
}

export interface EndpointHints {
  readonly forZones?: ReadonlyArray<{ readonly name: string }>;
  readonly forNodes?: ReadonlyArray<{ readonly name: string }>;
}

/** spec.trafficDistribution's values (PreferSameZone and PreferSameNode since Kubernetes 1.34). */
export const TRAFFIC_DISTRIBUTIONS = ["PreferClose", "PreferSameZone", "PreferSameNode"] as const;
export type TrafficDistribution = (typeof TRAFFIC_DISTRIBUTIONS)[number];

/** The Node label naming its zone, which endpoints' zones and zone hints refer to. */
export const LABEL_TOPOLOGY_ZONE = "topology.kubernetes.io/zone";

export interface EndpointPort {
  /** "" for the Service's unnamed port: matched against ServicePort.name. */
  readonly name: string;
  readonly protocol: Protocol;
  readonly port?: number;
  readonly appProtocol?: string;
}

export interface EndpointSlice {
  readonly apiVersion: "discovery.k8s.io/v1";
  readonly kind: "EndpointSlice";
  readonly metadata: ObjectMeta;
  readonly addressType: AddressType;
  readonly endpoints: readonly Endpoint[];
  readonly ports: readonly EndpointPort[];
}

// ---- v1 Pod --------------------------------------------------------------------------------

export type PodPhase = "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown";
export type ConditionStatus = "True" | "False" | "Unknown";

export interface ContainerPort {
  /** An IANA_SVC_NAME that a Service's targetPort can name. */
  readonly name?: string;
  readonly containerPort: number;
  readonly protocol: Protocol;
  readonly hostPort?: number;
  readonly hostIP?: string;
}

export interface Container {
  readonly name: string;
  readonly ports?: readonly ContainerPort[];
}

export interface PodSpec {
  readonly nodeName?: string;
  readonly hostNetwork?: boolean;
  /** With subdomain equal to a headless Service's name, published as the endpoint's hostname. */
  readonly hostname?: string;
  readonly subdomain?: string;
  readonly containers: readonly Container[];
}

export interface PodCondition {
  readonly type: string;
  readonly status: ConditionStatus;
}

export interface PodStatus {
  readonly phase?: PodPhase;
  /** Always podIPs[0].ip when there are pod IPs. */
  readonly podIP?: string;
  /** At most one per family, the primary family first. */
  readonly podIPs?: readonly { readonly ip: string }[];
  readonly conditions?: readonly PodCondition[];
}

export interface Pod {
  readonly apiVersion: "v1";
  readonly kind: "Pod";
  readonly metadata: ObjectMeta;
  readonly spec: PodSpec;
  readonly status: PodStatus;
}
