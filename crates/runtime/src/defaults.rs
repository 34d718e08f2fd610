//! Cluster-wide defaults (the seeds' values) and the annotation / label names Skiff's components share.

/// Pod network of the whole cluster; each node gets a `/NODE_POD_CIDR_PREFIX` of it.
pub const CLUSTER_POD_CIDR: &str = "10.244.0.0/16";
pub const NODE_POD_CIDR_PREFIX: u8 = 24;
/// Service (ClusterIP) range; `kubernetes` gets the first address, `kube-dns` the tenth.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const KUBE_DNS_SERVICE_IP: &str = "10.96.0.10";
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The node network `skiff up` builds: the host takes `.1`, nodes `.2` upward, the LoadBalancer pool the top.
pub const NODE_NETWORK_CIDR: &str = "172.30.0.0/24";
pub const LOAD_BALANCER_POOL: &str = "172.30.0.200-172.30.0.250";
pub const API_SERVER_PORT: u16 = 6443;

/// Node annotation: the MAC address of the node's VXLAN device (as flannel's backend-data).
pub const ANNOTATION_VTEP_MAC: &str = "skiff.dev/vtep-mac";
/// Node annotation: the node's address on the node network (the VXLAN underlay / host-gw next hop).
pub const ANNOTATION_NODE_IP: &str = "skiff.dev/node-ip";
/// Service annotation written by the LoadBalancer controller: the node that answers (ARP) for the
/// service's LoadBalancer addresses, as MetalLB's L2 mode does.
pub const ANNOTATION_LB_NODE: &str = "skiff.dev/loadbalancer-node";
/// The loadBalancerClass Skiff's pool serves (services with no class are served too).
pub const LOAD_BALANCER_CLASS: &str = "skiff.dev/pool";

/// EndpointSlice labels, as upstream.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// NetworkPolicy annotation: `"true"` logs the packets the policy's isolation denies (both ends named).
pub const ANNOTATION_LOG_DENIED: &str = "skiff.dev/log-denied";
