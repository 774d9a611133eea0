// Package policy turns CiliumNetworkPolicy and Kubernetes NetworkPolicy
// objects into the per-endpoint allow sets the datapath enforces
// (state.EndpointPolicy), across every cluster of the mesh.
//
// It has two halves. The decoders (DecodeCNP, DecodeCNPObject,
// DecodeNetworkPolicy, DecodeNetworkPolicyYAML) read user input strictly
// into a Policy: unknown fields and features meshbed does not enforce are
// rejected with an error that names the policy and the field path, so a
// policy is never half-applied. The Repository holds the policies in force
// and every known identity (local, remote and reserved), and computes, for
// the identities of this node's endpoints, which (peer identity, protocol,
// port range) tuples they may exchange traffic with. It works incrementally:
// when an identity appears only the selectors it matches are revisited, and
// each change reports the PolicyKeys added to and removed from each endpoint
// so the datapath touches only those map entries.
//
// # Use
//
// The agent creates one Repository per node (NewRepository with the cluster
// name), feeds it every identity of the mesh (UpsertIdentity/DeleteIdentity,
// local and remote, from the kvstore), the labels of local namespaces
// (SetNamespaceLabels) and every policy of its cluster (decode, then
// UpsertPolicy/DeletePolicy; a policy that fails to decode is reported and
// the version in force stays). For each endpoint on the node it calls
// Track(identity) to get the initial state.EndpointPolicy; every later call
// returns Changes: per tracked identity the enforcement now in force and the
// PolicyKeys to add and remove, plus the CIDR ipcache entries to add and
// remove. Compute returns the current policy of any identity at any time.
// The Repository is safe for concurrent use and does not log.
//
// # Semantics
//
// An endpoint selected by any policy in a direction denies by default in that
// direction; rules are additive (union). A CiliumNetworkPolicy spec enforces
// a direction when it has rules in it (`ingress: [{}]` enforces and allows
// nothing), unless enableDefaultDeny says otherwise; a NetworkPolicy
// enforces the directions of its policyTypes (default: Ingress, plus Egress
// when it has egress rules). Replies of allowed connections are the
// datapath's concern (conntrack) and need nothing here. With
// Config.AllowLocalhost, the local host may always reach endpoints (Cilium's
// allow-localhost default, for kubelet probes). A tracked identity the
// Repository does not know fails closed: both directions enforced, nothing
// allowed.
//
// Namespaces. In a namespaced CiliumNetworkPolicy the endpointSelector always
// applies to the policy's namespace only (a different namespace named in its
// matchLabels is dropped with a warning, as Cilium does), and every
// fromEndpoints/toEndpoints selector gets the policy's namespace added unless
// it names io.kubernetes.pod.namespace or a namespace label
// (io.cilium.k8s.namespace.labels.*) itself, or uses a reserved: label, or
// the endpointSelector selects reserved:init. This defaulting is visible in
// the decoded Policy.
//
// Clusters. A peer selector that does not name io.cilium.k8s.policy.cluster
// matches endpoints of the local cluster only (Cilium ≥ 1.19, the
// policy-default-local-cluster behaviour). Config.AllClusters restores the
// older behaviour (such selectors match every cluster) for
// CiliumNetworkPolicy; NetworkPolicy peers always select within the local
// cluster only. The cluster term is added by the Repository (it knows the
// cluster name), not by the decoders, and not to selectors of reserved:
// labels (reserved identities belong to no cluster). Remote endpoints are resolved through
// the identities the caller feeds in (UpsertIdentity), labelled with their
// own cluster.
//
// Labels. Identity labels are given without source prefix (app, not
// k8s:app). Selector keys may carry k8s:, any: or unspec: (stripped) or
// reserved: (kept: it selects a reserved identity, e.g. reserved:host). Every
// identity with a namespace also carries
// io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=<namespace>, and
// local identities carry the labels of their namespace as set with
// SetNamespaceLabels, under the same io.cilium.k8s.namespace.labels. prefix;
// that is how namespaceSelector is evaluated.
//
// Entities. world (world and every CIDR identity), cluster (the local cluster's
// endpoints plus host, remote-node, init, health, unmanaged, kube-apiserver),
// host, remote-node, kube-apiserver, init, health, unmanaged map to the
// reserved identities; all is the wildcard (PolicyKey.Identity 0).
//
// Ports. toPorts port is a decimal string; named ports are rejected as
// unsupported (meshbed does not resolve them), in both policy kinds. The
// CiliumNetworkPolicy protocol defaults to ANY, the NetworkPolicy one to
// TCP. An ANY rule with a port becomes two keys, TCP and UDP (the only port
// protocols the datapath knows), so in every PolicyKey with Port != 0 the
// Protocol is TCP or UDP; Port 0 means any port (of Protocol, or of any
// protocol for ProtoAny). EndPort is 0 for a single port, > Port for a range.
//
// L7. rules.dns is accepted and enforced as the L4 rule it sits in; the
// decoded Policy carries a warning that DNS names are not filtered. HTTP,
// Kafka and other L7 rules, deny rules, FQDN, service, group, node and ICMP
// selectors are rejected as unsupported. A rule may mix fromEndpoints,
// fromEntities and fromCIDR: the peers are the union.
//
// # CIDR identities
//
// The ipcache maps prefixes to identities by longest-prefix match. Every
// prefix a policy names (toCIDR, toCIDRSet, ipBlock, and every except
// prefix) gets a local CIDR identity 1<<24 | n (n ≥ 1, lowest free number
// first, stable while any policy references the prefix), labelled
// reserved:world. 0.0.0.0/0 and ::/0 are world (2) itself. A CIDR rule
// selects the CIDR identities of the prefixes inside it that are not inside
// one of its excepts (plus world for a /0), so an address in an except
// prefix resolves to that prefix's own identity and is not allowed by the
// rule, while entity world still selects it. Pod and node addresses are
// more specific (/32) ipcache entries and keep their own identities: CIDR
// rules do not select cluster endpoints. The Repository returns these
// entries (CIDRIdentities, Changes.CIDRsAdded/Removed) for the agent to
// program into the ipcache. CIDR identities are local to one agent and lie
// above the 24-bit range: they are never carried in the VXLAN VNI (world
// addresses are not tunnel sources; a node that forwards world traffic over
// the tunnel sends world, 2, and the receiver re-resolves the source address
// in its own ipcache).
package policy
