package policy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/meshbed/meshbed/datapath/state"
)

// Config of a Repository.
type Config struct {
	// ClusterName is the local cluster; selectors that name no cluster
	// select in it. Required.
	ClusterName string
	// AllClusters restores Cilium's pre-1.19 default for
	// CiliumNetworkPolicy: a peer selector without
	// io.cilium.k8s.policy.cluster matches endpoints of every cluster.
	// NetworkPolicy peers stay local regardless.
	AllClusters bool
	// AllowLocalhost lets the local host (identity 1) reach every endpoint
	// whose ingress is enforced, as Cilium's default allow-localhost does,
	// so that kubelet probes keep working under policy. The agent should
	// set it on real nodes; without it host traffic needs a rule.
	AllowLocalhost bool
}

// Identity is a security identity of the mesh and its labels, without
// source prefix; pod identities include io.kubernetes.pod.namespace and
// io.cilium.k8s.policy.cluster.
type Identity struct {
	ID     uint32
	Labels map[string]string
}

// CIDR identities: local to one agent, above the 24-bit cluster range.
const (
	CIDRIdentityBase uint32 = 1 << 24
	CIDRIdentityMax  uint32 = 1<<25 - 1
)

// EndpointChange is how one change moved the allow set of the endpoints
// with an identity: the keys to add to and remove from their policy map,
// and the enforcement now in force.
type EndpointChange struct {
	Identity        uint32
	IngressEnforced bool
	EgressEnforced  bool
	Added           []state.PolicyKey
	Removed         []state.PolicyKey
}

// Changes is what one Repository call changed for the tracked endpoints and
// the ipcache. Apply CIDRsAdded before the endpoint changes and CIDRsRemoved
// after them, so that a key never names a prefix identity the ipcache does
// not yet, or no longer, resolve.
type Changes struct {
	// Endpoints, by identity.
	Endpoints []EndpointChange
	// CIDRsAdded and CIDRsRemoved are ipcache entries of CIDR identities,
	// by prefix.
	CIDRsAdded   []state.IPCacheEntry
	CIDRsRemoved []state.IPCacheEntry
}

// Empty reports whether nothing changed.
func (c *Changes) Empty() bool {
	return len(c.Endpoints) == 0 && len(c.CIDRsAdded) == 0 && len(c.CIDRsRemoved) == 0
}

// MapUpdates counts the datapath map entries the change touches: policy
// keys added and removed, and ipcache entries.
func (c *Changes) MapUpdates() int {
	n := len(c.CIDRsAdded) + len(c.CIDRsRemoved)
	for _, e := range c.Endpoints {
		n += len(e.Added) + len(e.Removed)
	}
	return n
}

// Repository holds the policies in force and the identities of the mesh,
// and keeps the allow sets of tracked endpoint identities up to date. It is
// safe for concurrent use.
type Repository struct {
	mu  sync.Mutex
	cfg Config

	identities map[uint32]*identity
	nsLabels   map[string]map[string]string
	policies   map[Ref]*cPolicy
	selectors  map[string]*selEntry
	tracked    map[uint32]*endpoint

	cidrByPrefix map[netip.Prefix]*cidrEntry
	cidrFree     []uint32 // freed numbers, kept sorted
	cidrNext     uint32   // next never-used number
}

type identity struct {
	id     uint32
	labels map[string]string // as given
	eff    map[string]string // what selectors see: labels plus namespace labels
	cidr   netip.Prefix      // CIDR identities only
}

type cidrEntry struct {
	id   uint32
	refs int
}

// selEntry is a peer or subject selector shared by every rule that uses
// it, with the identities it currently selects.
type selEntry struct {
	key   string
	label *Selector // label selector, or
	cidr  *CIDR     // CIDR selector
	ids   map[uint32]struct{}
	refs  int
	rules []*cRule // rules with this selector among their peers
}

func (e *selEntry) matches(id *identity) bool {
	if e.label != nil {
		return e.label.Matches(id.eff)
	}
	if id.id == state.IdentityWorld {
		return e.cidr.Prefix.Bits() == 0
	}
	if !id.cidr.IsValid() || !inside(id.cidr, e.cidr.Prefix) {
		return false
	}
	for _, x := range e.cidr.Except {
		if inside(id.cidr, x) {
			return false
		}
	}
	return true
}

type cPolicy struct {
	src      *Policy
	specs    []*cSpec
	prefixes []netip.Prefix // distinct prefixes needing CIDR identities
}

type cSpec struct {
	subject      *selEntry
	enfIn, enfEg bool
	rules        []*cRule
}

type cRule struct {
	spec     *cSpec
	dir      state.Direction
	wildcard bool // any peer: PolicyKey.Identity 0
	peers    []*selEntry
	ports    []portKey
}

type portKey struct {
	proto     state.Protocol
	port, end uint16
}

func (p portKey) key(dir state.Direction, id uint32) state.PolicyKey {
	return state.PolicyKey{Direction: dir, Identity: id, Protocol: p.proto, Port: p.port, EndPort: p.end}
}

// endpoint is a tracked identity's materialized allow set. keys counts the
// (rule, peer, port) contributions to each key, so an identity can be added
// or removed without recomputing the rest.
type endpoint struct {
	id           uint32
	refs         int
	known        bool
	enfIn, enfEg int
	keys         map[state.PolicyKey]int32
}

// NewRepository returns an empty repository that knows the reserved
// identities.
func NewRepository(cfg Config) (*Repository, error) {
	if cfg.ClusterName == "" {
		return nil, errors.New("new policy repository: cluster name is required")
	}
	r := &Repository{
		cfg:          cfg,
		identities:   make(map[uint32]*identity),
		nsLabels:     make(map[string]map[string]string),
		policies:     make(map[Ref]*cPolicy),
		selectors:    make(map[string]*selEntry),
		tracked:      make(map[uint32]*endpoint),
		cidrByPrefix: make(map[netip.Prefix]*cidrEntry),
		cidrNext:     1,
	}
	for id, name := range reservedNames {
		l := map[string]string{ReservedPrefix + name: ""}
		r.identities[id] = &identity{id: id, labels: l, eff: l}
	}
	return r, nil
}

// txn collects what one call changed, netting out keys that were added and
// removed again.
type txn struct {
	touched     map[uint32]*touch
	cidrAdded   map[netip.Prefix]uint32
	cidrRemoved map[netip.Prefix]uint32
}

type touch struct {
	beforeIn, beforeEg bool
	delta              map[state.PolicyKey]int8
}

func newTxn() *txn {
	return &txn{touched: map[uint32]*touch{}, cidrAdded: map[netip.Prefix]uint32{}, cidrRemoved: map[netip.Prefix]uint32{}}
}

func (tx *txn) touch(ep *endpoint) *touch {
	t := tx.touched[ep.id]
	if t == nil {
		in, eg := ep.enforcement()
		t = &touch{beforeIn: in, beforeEg: eg, delta: map[state.PolicyKey]int8{}}
		tx.touched[ep.id] = t
	}
	return t
}

func (t *touch) add(k state.PolicyKey, d int8) {
	if v := t.delta[k] + d; v == 0 {
		delete(t.delta, k)
	} else {
		t.delta[k] = v
	}
}

// enforcement is what the datapath enforces; an endpoint whose identity is
// unknown fails closed.
func (ep *endpoint) enforcement() (in, eg bool) {
	if !ep.known {
		return true, true
	}
	return ep.enfIn > 0, ep.enfEg > 0
}

func (r *Repository) changes(tx *txn) Changes {
	var c Changes
	for id, t := range tx.touched {
		ep := r.tracked[id]
		in, eg := ep.enforcement()
		ch := EndpointChange{Identity: id, IngressEnforced: in, EgressEnforced: eg}
		for k, d := range t.delta {
			if d > 0 {
				ch.Added = append(ch.Added, k)
			} else {
				ch.Removed = append(ch.Removed, k)
			}
		}
		if len(ch.Added) == 0 && len(ch.Removed) == 0 && in == t.beforeIn && eg == t.beforeEg {
			continue
		}
		slices.SortFunc(ch.Added, ComparePolicyKeys)
		slices.SortFunc(ch.Removed, ComparePolicyKeys)
		c.Endpoints = append(c.Endpoints, ch)
	}
	slices.SortFunc(c.Endpoints, func(a, b EndpointChange) int { return cmp.Compare(a.Identity, b.Identity) })
	for p, id := range tx.cidrAdded {
		if tx.cidrRemoved[p] == id {
			continue
		}
		c.CIDRsAdded = append(c.CIDRsAdded, state.IPCacheEntry{Prefix: p, Identity: id})
	}
	for p, id := range tx.cidrRemoved {
		if tx.cidrAdded[p] == id {
			continue
		}
		c.CIDRsRemoved = append(c.CIDRsRemoved, state.IPCacheEntry{Prefix: p, Identity: id})
	}
	slices.SortFunc(c.CIDRsAdded, compareIPCache)
	slices.SortFunc(c.CIDRsRemoved, compareIPCache)
	return c
}

// ComparePolicyKeys orders keys by direction, identity, protocol, port and
// end port; Compute and Changes list keys in this order.
func ComparePolicyKeys(a, b state.PolicyKey) int {
	return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Identity, b.Identity),
		cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
}

func compareIPCache(a, b state.IPCacheEntry) int {
	return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
}

// UpsertPolicy puts p in force, replacing the policy with the same Ref. An
// invalid p is refused and the version in force stays. The Repository keeps
// p: do not modify it afterwards.
func (r *Repository) UpsertPolicy(p *Policy) (Changes, error) {
	if p == nil {
		return Changes{}, errors.New("upsert policy: nil policy")
	}
	if err := p.Validate(); err != nil {
		return Changes{}, fmt.Errorf("upsert policy: %w", err)
	}
	prefixes := policyPrefixes(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	newPrefixes := 0
	for _, pfx := range prefixes {
		if r.cidrByPrefix[pfx] == nil {
			newPrefixes++
		}
	}
	if avail := len(r.cidrFree) + int(CIDRIdentityMax-CIDRIdentityBase-r.cidrNext+1); newPrefixes > avail {
		return Changes{}, fmt.Errorf("upsert policy %s: %d new CIDR identities needed, %d left", p.Ref, newPrefixes, avail)
	}
	tx := newTxn()
	// New CIDR identities first, so that the new selectors see them; the
	// old version's go last, once nothing of the new one refers to them.
	for _, pfx := range prefixes {
		r.acquireCIDR(tx, pfx)
	}
	old := r.policies[p.Ref]
	cp := r.compile(p)
	cp.prefixes = prefixes
	affected := r.subjectsOf(old, r.subjectsOf(cp, nil))
	if old != nil {
		r.uncompile(old)
	}
	r.policies[p.Ref] = cp
	for _, id := range sortedIDs(affected) {
		r.recompute(tx, r.tracked[id])
	}
	if old != nil {
		for _, pfx := range old.prefixes {
			r.releaseCIDR(tx, pfx)
		}
	}
	return r.changes(tx), nil
}

// DeletePolicy removes a policy; deleting one that is not in force is a
// no-op.
func (r *Repository) DeletePolicy(ref Ref) Changes {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.policies[ref]
	if old == nil {
		return Changes{}
	}
	tx := newTxn()
	affected := r.subjectsOf(old, nil)
	r.uncompile(old)
	delete(r.policies, ref)
	for _, id := range sortedIDs(affected) {
		r.recompute(tx, r.tracked[id])
	}
	for _, pfx := range old.prefixes {
		r.releaseCIDR(tx, pfx)
	}
	return r.changes(tx)
}

// Policy returns the version of a policy in force.
func (r *Repository) Policy(ref Ref) (*Policy, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cp, ok := r.policies[ref]
	if !ok {
		return nil, false
	}
	return cp.src, true
}

// UpsertIdentity adds an identity of this or another cluster, or replaces
// its labels. Only cluster identities (256 to 2^24-1) are accepted:
// reserved and CIDR identities are the Repository's own.
func (r *Repository) UpsertIdentity(id Identity) (Changes, error) {
	if id.ID < state.IdentityMinCluster || id.ID > state.IdentityMax {
		return Changes{}, fmt.Errorf("upsert identity %d: not a cluster identity (%d-%d)", id.ID, state.IdentityMinCluster, state.IdentityMax)
	}
	labels := make(map[string]string, len(id.Labels))
	for k, v := range id.Labels {
		ck, err := canonicalKey(k)
		if err == nil && strings.HasPrefix(ck, ReservedPrefix) {
			err = errors.New("reserved labels belong to reserved identities")
		}
		if err == nil && ck == "" {
			err = errors.New("empty key")
		}
		if err != nil {
			return Changes{}, fmt.Errorf("upsert identity %d: label %q: %w", id.ID, k, err)
		}
		labels[ck] = v
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.identities[id.ID]
	if old != nil && maps.Equal(old.labels, labels) {
		return Changes{}, nil
	}
	tx := newTxn()
	if old != nil {
		r.removeIdentity(tx, id.ID)
	}
	r.addIdentity(tx, &identity{id: id.ID, labels: labels, eff: r.effective(labels)})
	return r.changes(tx), nil
}

// DeleteIdentity removes a cluster identity; unknown, reserved and CIDR
// identities are ignored.
func (r *Repository) DeleteIdentity(id uint32) Changes {
	if id < state.IdentityMinCluster || id > state.IdentityMax {
		return Changes{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.identities[id] == nil {
		return Changes{}
	}
	tx := newTxn()
	r.removeIdentity(tx, id)
	return r.changes(tx)
}

// SetNamespaceLabels sets the labels of a namespace of the local cluster,
// which namespaceSelector matches; nil forgets the namespace. The
// kubernetes.io/metadata.name label is always present and need not be
// given. Identities of other clusters carry their own namespace labels, if
// any.
func (r *Repository) SetNamespaceLabels(namespace string, labels map[string]string) Changes {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(labels) == 0 {
		delete(r.nsLabels, namespace)
	} else {
		r.nsLabels[namespace] = maps.Clone(labels)
	}
	tx := newTxn()
	var ids []uint32
	for id, ident := range r.identities {
		if ident.labels[LabelCluster] == r.cfg.ClusterName && ident.labels[LabelNamespace] == namespace {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		old := r.identities[id]
		eff := r.effective(old.labels)
		if maps.Equal(eff, old.eff) {
			continue
		}
		r.removeIdentity(tx, id)
		r.addIdentity(tx, &identity{id: id, labels: old.labels, eff: eff})
	}
	return r.changes(tx)
}

// effective adds the namespace labels selectors match on.
func (r *Repository) effective(labels map[string]string) map[string]string {
	ns, ok := labels[LabelNamespace]
	if !ok {
		return labels
	}
	eff := maps.Clone(labels)
	if labels[LabelCluster] == r.cfg.ClusterName {
		for k, v := range r.nsLabels[ns] {
			eff[LabelNamespaceLabelsPrefix+k] = v
		}
	}
	eff[LabelNamespaceLabelsPrefix+LabelNamespaceName] = ns
	return eff
}

// Track starts keeping the allow set of an endpoint identity up to date and
// reporting it in Changes; several endpoints may share an identity (Track
// counts). It returns the current policy, as Compute.
func (r *Repository) Track(id uint32) (*state.EndpointPolicy, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep := r.tracked[id]
	if ep == nil {
		ep = &endpoint{id: id, keys: map[state.PolicyKey]int32{}}
		r.tracked[id] = ep
		r.recompute(newTxn(), ep)
	}
	ep.refs++
	return policyOf(id, ep.known, ep.enfIn, ep.enfEg, ep.keys)
}

// Untrack undoes one Track.
func (r *Repository) Untrack(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ep := r.tracked[id]; ep != nil {
		if ep.refs--; ep.refs <= 0 {
			delete(r.tracked, id)
		}
	}
}

// Compute returns the policy of an endpoint with identity id: nil when no
// policy selects it (everything allowed), else the enforced directions and
// the allowed keys in ComparePolicyKeys order. For an unknown identity it
// returns a deny-all policy and ErrUnknownIdentity.
func (r *Repository) Compute(id uint32) (*state.EndpointPolicy, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ep := r.tracked[id]; ep != nil {
		return policyOf(id, ep.known, ep.enfIn, ep.enfEg, ep.keys)
	}
	known, in, eg, keys := r.evaluate(id)
	return policyOf(id, known, in, eg, keys)
}

func policyOf(id uint32, known bool, in, eg int, keys map[state.PolicyKey]int32) (*state.EndpointPolicy, error) {
	if !known {
		return &state.EndpointPolicy{IngressEnforced: true, EgressEnforced: true}, fmt.Errorf("identity %d: %w", id, ErrUnknownIdentity)
	}
	if in == 0 && eg == 0 && len(keys) == 0 {
		return nil, nil
	}
	p := &state.EndpointPolicy{IngressEnforced: in > 0, EgressEnforced: eg > 0}
	if len(keys) > 0 {
		p.Allow = slices.SortedFunc(maps.Keys(keys), ComparePolicyKeys)
	}
	return p, nil
}

// CIDRIdentities returns the ipcache entries of every CIDR identity in
// use, by prefix.
func (r *Repository) CIDRIdentities() []state.IPCacheEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]state.IPCacheEntry, 0, len(r.cidrByPrefix))
	for p, e := range r.cidrByPrefix {
		out = append(out, state.IPCacheEntry{Prefix: p, Identity: e.id})
	}
	slices.SortFunc(out, compareIPCache)
	return out
}

// evaluate computes an identity's allow set from scratch.
func (r *Repository) evaluate(id uint32) (known bool, in, eg int, keys map[state.PolicyKey]int32) {
	keys = map[state.PolicyKey]int32{}
	if r.identities[id] == nil {
		return false, 0, 0, keys
	}
	for _, cp := range r.policies {
		for _, cs := range cp.specs {
			if _, ok := cs.subject.ids[id]; !ok {
				continue
			}
			if cs.enfIn {
				in++
			}
			if cs.enfEg {
				eg++
			}
			for _, cr := range cs.rules {
				if cr.wildcard {
					for _, pk := range cr.ports {
						keys[pk.key(cr.dir, 0)]++
					}
				}
				for _, e := range cr.peers {
					for peer := range e.ids {
						for _, pk := range cr.ports {
							keys[pk.key(cr.dir, peer)]++
						}
					}
				}
			}
		}
	}
	if in > 0 && r.cfg.AllowLocalhost {
		keys[state.PolicyKey{Direction: state.Ingress, Identity: state.IdentityHost}]++
	}
	return true, in, eg, keys
}

// recompute replaces a tracked endpoint's allow set with a fresh
// evaluation and records the difference.
func (r *Repository) recompute(tx *txn, ep *endpoint) {
	t := tx.touch(ep)
	known, in, eg, keys := r.evaluate(ep.id)
	for k := range ep.keys {
		if _, ok := keys[k]; !ok {
			t.add(k, -1)
		}
	}
	for k := range keys {
		if _, ok := ep.keys[k]; !ok {
			t.add(k, +1)
		}
	}
	ep.known, ep.enfIn, ep.enfEg, ep.keys = known, in, eg, keys
}

func (r *Repository) inc(tx *txn, ep *endpoint, k state.PolicyKey) {
	c := ep.keys[k]
	ep.keys[k] = c + 1
	if c == 0 {
		tx.touch(ep).add(k, +1)
	}
}

func (r *Repository) dec(tx *txn, ep *endpoint, k state.PolicyKey) {
	switch c := ep.keys[k]; {
	case c > 1:
		ep.keys[k] = c - 1
	case c == 1:
		delete(ep.keys, k)
		tx.touch(ep).add(k, -1)
	}
}

// forSubjects calls fn for every tracked endpoint a spec selects, except
// skip (whose allow set its caller recomputes).
func (r *Repository) forSubjects(cs *cSpec, skip uint32, fn func(*endpoint)) {
	for id, ep := range r.tracked {
		if id == skip {
			continue
		}
		if _, ok := cs.subject.ids[id]; ok {
			fn(ep)
		}
	}
}

// addIdentity is the incremental path: only the selectors that match the
// new identity, and the endpoints their rules apply to, are touched.
func (r *Repository) addIdentity(tx *txn, id *identity) {
	r.identities[id.id] = id
	for _, e := range r.selectors {
		if !e.matches(id) {
			continue
		}
		e.ids[id.id] = struct{}{}
		for _, cr := range e.rules {
			r.forSubjects(cr.spec, id.id, func(ep *endpoint) {
				for _, pk := range cr.ports {
					r.inc(tx, ep, pk.key(cr.dir, id.id))
				}
			})
		}
	}
	if ep := r.tracked[id.id]; ep != nil {
		r.recompute(tx, ep)
	}
}

func (r *Repository) removeIdentity(tx *txn, id uint32) {
	for _, e := range r.selectors {
		if _, ok := e.ids[id]; !ok {
			continue
		}
		for _, cr := range e.rules {
			r.forSubjects(cr.spec, id, func(ep *endpoint) {
				for _, pk := range cr.ports {
					r.dec(tx, ep, pk.key(cr.dir, id))
				}
			})
		}
		delete(e.ids, id)
	}
	delete(r.identities, id)
	if ep := r.tracked[id]; ep != nil {
		r.recompute(tx, ep)
	}
}

// subjectsOf adds to set the tracked identities cp's specs select.
func (r *Repository) subjectsOf(cp *cPolicy, set map[uint32]struct{}) map[uint32]struct{} {
	if set == nil {
		set = map[uint32]struct{}{}
	}
	if cp == nil {
		return set
	}
	for _, cs := range cp.specs {
		for id := range r.tracked {
			if _, ok := cs.subject.ids[id]; ok {
				set[id] = struct{}{}
			}
		}
	}
	return set
}

func sortedIDs(set map[uint32]struct{}) []uint32 {
	return slices.Sorted(maps.Keys(set))
}

// compile turns a validated policy into shared selector entries and rules.
func (r *Repository) compile(p *Policy) *cPolicy {
	localOnly := !r.cfg.AllClusters || p.Source == SourceNetworkPolicy
	cp := &cPolicy{src: p}
	for i := range p.Specs {
		s := &p.Specs[i]
		cs := &cSpec{subject: r.acquireLabels(s.Subject.Canonical()), enfIn: s.EnforceIngress, enfEg: s.EnforceEgress}
		for _, d := range []struct {
			dir   state.Direction
			rules []Rule
		}{{state.Ingress, s.Ingress}, {state.Egress, s.Egress}} {
			for _, rule := range d.rules {
				if cr := r.compileRule(cs, d.dir, &rule, localOnly); cr != nil {
					cs.rules = append(cs.rules, cr)
				}
			}
		}
		cp.specs = append(cp.specs, cs)
	}
	return cp
}

func (r *Repository) compileRule(cs *cSpec, dir state.Direction, rule *Rule, localOnly bool) *cRule {
	cr := &cRule{spec: cs, dir: dir, ports: expandPorts(rule.Ports)}
	seen := map[*selEntry]bool{}
	for _, peer := range rule.Peers {
		if peer.Entity == EntityAll {
			cr.wildcard = true
			continue
		}
		for _, e := range r.peerEntries(peer, localOnly) {
			if seen[e] {
				r.release(e)
				continue
			}
			seen[e] = true
			cr.peers = append(cr.peers, e)
		}
	}
	if cr.wildcard {
		// Identity 0 already allows every peer on these ports.
		for _, e := range cr.peers {
			r.release(e)
		}
		cr.peers = nil
	}
	if !cr.wildcard && len(cr.peers) == 0 {
		return nil
	}
	for _, e := range cr.peers {
		e.rules = append(e.rules, cr)
	}
	return cr
}

// peerEntries acquires the selector entries of a peer (not EntityAll).
func (r *Repository) peerEntries(peer Peer, localOnly bool) []*selEntry {
	local := Requirement{Key: LabelCluster, Operator: OpIn, Values: []string{r.cfg.ClusterName}}
	reserved := func(name string) *selEntry {
		return r.acquireLabels(Selector{Requirements: []Requirement{{Key: ReservedPrefix + name, Operator: OpExists}}})
	}
	switch {
	case peer.Selector != nil:
		sel := peer.Selector.Canonical()
		if localOnly && !sel.hasKeyPrefix(ReservedPrefix) && !sel.HasKey(LabelCluster) {
			sel = sel.with(local)
		}
		return []*selEntry{r.acquireLabels(sel)}
	case peer.CIDR != nil:
		return []*selEntry{r.acquireCIDRSelector(peer.CIDR)}
	case peer.Entity == EntityCluster:
		out := []*selEntry{r.acquireLabels(Selector{Requirements: []Requirement{local}})}
		for _, id := range []uint32{state.IdentityHost, state.IdentityRemoteNode, state.IdentityInit,
			state.IdentityHealth, state.IdentityUnmanaged, state.IdentityKubeAPIServer} {
			out = append(out, reserved(reservedNames[id]))
		}
		return out
	default:
		return []*selEntry{reserved(reservedNames[reservedEntities[peer.Entity]])}
	}
}

func (r *Repository) uncompile(cp *cPolicy) {
	for _, cs := range cp.specs {
		for _, cr := range cs.rules {
			for _, e := range cr.peers {
				if i := slices.Index(e.rules, cr); i >= 0 {
					e.rules = slices.Delete(e.rules, i, i+1)
				}
				r.release(e)
			}
		}
		r.release(cs.subject)
	}
}

func (r *Repository) acquireLabels(sel Selector) *selEntry {
	return r.acquire("L:"+sel.String(), func() *selEntry { return &selEntry{label: &sel} })
}

func (r *Repository) acquireCIDRSelector(c *CIDR) *selEntry {
	except := slices.Clone(c.Except)
	slices.SortFunc(except, comparePrefix)
	except = slices.Compact(except)
	var b strings.Builder
	b.WriteString("C:" + c.Prefix.String())
	for _, x := range except {
		b.WriteString("!" + x.String())
	}
	return r.acquire(b.String(), func() *selEntry { return &selEntry{cidr: &CIDR{Prefix: c.Prefix, Except: except}} })
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// acquire returns the shared entry for key, creating it (and finding the
// identities it selects) on first use.
func (r *Repository) acquire(key string, mk func() *selEntry) *selEntry {
	if e := r.selectors[key]; e != nil {
		e.refs++
		return e
	}
	e := mk()
	e.key, e.refs, e.ids = key, 1, map[uint32]struct{}{}
	for _, id := range r.identities {
		if e.matches(id) {
			e.ids[id.id] = struct{}{}
		}
	}
	r.selectors[key] = e
	return e
}

func (r *Repository) release(e *selEntry) {
	if e.refs--; e.refs <= 0 {
		delete(r.selectors, e.key)
	}
}

// expandPorts turns a rule's ports into key templates: no ports is every
// port and protocol; ANY with a port is TCP and UDP.
func expandPorts(ports []Port) []portKey {
	if len(ports) == 0 {
		return []portKey{{proto: state.ProtoAny}}
	}
	var out []portKey
	for _, p := range ports {
		end := p.EndPort
		if end == p.Port {
			end = 0
		}
		if p.Protocol == state.ProtoAny && p.Port != 0 {
			out = append(out, portKey{state.TCP, p.Port, end}, portKey{state.UDP, p.Port, end})
		} else {
			out = append(out, portKey{p.Protocol, p.Port, end})
		}
	}
	slices.SortFunc(out, func(a, b portKey) int {
		return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port), cmp.Compare(a.end, b.end))
	})
	return slices.Compact(out)
}

// policyPrefixes lists the distinct prefixes of p that need a CIDR
// identity: every CIDR and except prefix except the /0s, which are world.
func policyPrefixes(p *Policy) []netip.Prefix {
	set := map[netip.Prefix]struct{}{}
	for _, s := range p.Specs {
		for _, rules := range [][]Rule{s.Ingress, s.Egress} {
			for _, rule := range rules {
				for _, peer := range rule.Peers {
					if peer.CIDR == nil {
						continue
					}
					if peer.CIDR.Prefix.Bits() > 0 {
						set[peer.CIDR.Prefix] = struct{}{}
					}
					for _, x := range peer.CIDR.Except {
						set[x] = struct{}{}
					}
				}
			}
		}
	}
	return slices.SortedFunc(maps.Keys(set), comparePrefix)
}

func (r *Repository) acquireCIDR(tx *txn, p netip.Prefix) {
	if e := r.cidrByPrefix[p]; e != nil {
		e.refs++
		return
	}
	var n uint32
	if len(r.cidrFree) > 0 {
		n, r.cidrFree = r.cidrFree[0], r.cidrFree[1:]
	} else {
		n = r.cidrNext
		r.cidrNext++
	}
	id := CIDRIdentityBase | n
	r.cidrByPrefix[p] = &cidrEntry{id: id, refs: 1}
	l := map[string]string{ReservedPrefix + "world": ""}
	r.addIdentity(tx, &identity{id: id, labels: l, eff: l, cidr: p})
	tx.cidrAdded[p] = id
}

func (r *Repository) releaseCIDR(tx *txn, p netip.Prefix) {
	e := r.cidrByPrefix[p]
	if e == nil {
		return
	}
	if e.refs--; e.refs > 0 {
		return
	}
	delete(r.cidrByPrefix, p)
	r.removeIdentity(tx, e.id)
	n := e.id &^ CIDRIdentityBase
	i, _ := slices.BinarySearch(r.cidrFree, n)
	r.cidrFree = slices.Insert(r.cidrFree, i, n)
	tx.cidrRemoved[p] = e.id
}
