// Package wireguard is a node's transparent encryption: one WireGuard
// device in the node's network namespace with one peer per other node of
// the mesh, and the policy routing that sends pod traffic to other nodes
// through it, as Cilium's WireGuard mode does.
//
// # Implementations
//
// The kernel's WireGuard is used where the module exists; elsewhere the
// userspace implementation (golang.zx2c4.com/wireguard) runs in this
// process over a TUN device created in the node's namespace. Setup picks one
// (Config.Impl forces it) and Device.Impl says which. Both are configured
// through wgctrl, the kernel device over generic netlink and the userspace
// one over its UAPI socket, so peer configuration is one code path.
//
// # What goes through the device
//
// Traffic to other nodes is steered by two policy rules and one routing
// table of its own (RouteTable), so nothing of the datapath's main-table
// routes changes and partitions (a rule before them) still cut:
//
//   - native routing: every remote pod CIDR is routed into the device;
//   - tunnel routing: the VXLAN packets to every remote node (UDP to the
//     VXLAN port, whatever their inner packet) are routed into it, so the
//     tunnel itself is encrypted.
//
// WireGuard's own UDP packets carry FirewallMark, and the first rule sends
// marked packets to the main table, so they leave through the underlay. Traffic within the node
// never reaches the rule's routes.
//
// A node without a usable public key (none published: an older agent; or
// one that does not decode) gets no peer. In strict mode its destinations
// are routed "prohibit" in the table, so traffic to it is refused; otherwise
// they have no route there and traffic to it goes in clear, as before.
package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/meshbed/meshbed/datapath/netns"
)

const (
	// DeviceName is the WireGuard device's name in the node namespace.
	DeviceName = "meshbed_wg0"
	// DefaultPort is the UDP port WireGuard listens on: Cilium's.
	DefaultPort = 51871
	// Overhead is what WireGuard adds to a packet, counted as Cilium counts
	// it (outer IPv6 40, UDP 8, WireGuard header 16 and tag 16): the device
	// MTU is the underlay's minus this.
	Overhead = 80
	// FirewallMark marks WireGuard's own packets so the rule lets them
	// through to the underlay.
	FirewallMark = 0x6d770000
	// RouteTable holds the routes into the device ("mw").
	RouteTable = 0x6d77
	// RulePriority places the rules (this and the one before it) after
	// the simulator's partition rule (100) and before the main table.
	RulePriority = 150
	// RouteProtocol marks the routes this package installs (rtm_protocol
	// 110), so it prunes only its own.
	RouteProtocol netlink.RouteProtocol = 110
)

// Impl is a WireGuard implementation.
type Impl string

const (
	// Auto picks the kernel where the module exists, else userspace.
	Auto      Impl = ""
	Kernel    Impl = "kernel"
	Userspace Impl = "userspace"
)

// Config of a node's WireGuard device.
type Config struct {
	// NS is the node's namespace; the caller keeps ownership.
	NS *netns.NS
	// NodeIP is the node's underlay address: the source of what it sends
	// through the device and the address peers reach it at.
	NodeIP netip.Addr
	// KeyFile keeps the private key (LoadOrCreateKey). Required.
	KeyFile string
	// Port defaults to DefaultPort.
	Port int
	// MTU of the device; defaults to 1500 - Overhead.
	MTU int
	// Impl forces an implementation; Auto (empty) picks one.
	Impl Impl
	// Strict refuses traffic to nodes without a usable key instead of
	// sending it in clear.
	Strict bool
	// TunnelPort, when non-zero, is the VXLAN port of tunnel mode: the rule
	// then takes only UDP to that port (the tunnel), and routes are per
	// node address. Zero: native routing, routes per pod CIDR.
	TunnelPort int
	Logger     *slog.Logger
}

// Peer is another node as the device needs it.
type Peer struct {
	// Node names the node in errors ("cluster/node").
	Node string
	// PublicKey as the node published it (base64); empty when it published
	// none.
	PublicKey string
	// IP is the node's underlay address (the endpoint).
	IP netip.Addr
	// PodCIDR is the node's pod CIDR (the allowed IPs, with IP).
	PodCIDR netip.Prefix
}

// Device is a node's WireGuard device.
type Device struct {
	cfg  Config
	log  *slog.Logger
	key  wgtypes.Key
	impl Impl
	name string // wgctrl's name for the device (the UAPI socket's for userspace)

	mu       sync.Mutex
	client   *wgctrl.Client
	user     *userDevice // userspace only
	rejected map[string]error
	unpeered []string
	closed   bool
}

// ErrNoImplementation is returned when neither the kernel module nor a TUN
// device is available; the node cannot encrypt and must not pretend to.
var ErrNoImplementation = errors.New("no WireGuard implementation: no kernel module and no /dev/net/tun")

// Setup creates (or, for the kernel device, adopts with its peers) the
// node's WireGuard device, up, with the node's private key, and the rule
// that steers traffic into it.
func Setup(cfg Config) (*Device, error) {
	if cfg.NS == nil || !cfg.NodeIP.Is4() || cfg.KeyFile == "" {
		return nil, errors.New("wireguard: a namespace, an IPv4 node address and a key file are required")
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500 - Overhead
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	key, created, err := LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("wireguard: %w", err)
	}
	d := &Device{cfg: cfg, log: cfg.Logger, key: key, rejected: map[string]error{}}
	if err := d.setup(); err != nil {
		d.Close()
		return nil, fmt.Errorf("wireguard in %s: %w", cfg.NS, err)
	}
	d.log.Info("WireGuard device up", "impl", d.impl, "device", DeviceName, "port", cfg.Port, "mtu", cfg.MTU,
		"publicKey", d.PublicKey(), "keyCreated", created, "keyFile", cfg.KeyFile, "strict", cfg.Strict)
	return d, nil
}

func (d *Device) setup() error {
	h, err := d.cfg.NS.Handle()
	if err != nil {
		return err
	}
	impl := d.cfg.Impl
	if impl == Auto || impl == Kernel {
		switch err := addKernelDevice(h, d.cfg.MTU); {
		case err == nil:
			impl = Kernel
		case impl == Kernel:
			return fmt.Errorf("kernel device: %w", err)
		case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV):
			impl = Userspace
		default:
			return fmt.Errorf("kernel device: %w", err)
		}
	}
	d.impl = impl
	d.name = DeviceName
	if impl == Userspace {
		if d.user, err = startUserspace(d.cfg, d.log); err != nil {
			return err
		}
		d.name = d.user.uapiName
	}
	link, err := h.LinkByName(DeviceName)
	if err != nil {
		return fmt.Errorf("find device: %w", err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up: %w", err)
	}
	// The genetlink socket of the kernel client belongs to the namespace
	// it is opened in.
	err = d.cfg.NS.Do(func() (err error) {
		d.client, err = wgctrl.New()
		return err
	})
	if err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	port, mark := d.cfg.Port, FirewallMark
	if err := d.client.ConfigureDevice(d.name, wgtypes.Config{PrivateKey: &d.key, ListenPort: &port, FirewallMark: &mark}); err != nil {
		return fmt.Errorf("configure device: %w", err)
	}
	return d.ensureRule(h)
}

// addKernelDevice creates the kernel device, or keeps one left by an
// earlier agent (with its peers, so a restart does not re-handshake).
func addKernelDevice(h *netlink.Handle, mtu int) error {
	if link, err := h.LinkByName(DeviceName); err == nil {
		if link.Type() == "wireguard" {
			return h.LinkSetMTU(link, mtu)
		}
		if err := h.LinkDel(link); err != nil {
			return fmt.Errorf("replace %s device %s: %w", link.Type(), DeviceName, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = DeviceName, mtu
	return h.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs})
}

// rules are the two policy rules: WireGuard's own (marked) packets go to
// the main table, so they leave through the underlay; then what is to be
// encrypted (everything in native mode, the tunnel's UDP in tunnel mode)
// looks up RouteTable, and falls through to the main table where that has
// no route. (One inverted rule cannot say this: "not" inverts the whole
// selector, port and protocol included.)
func (d *Device) rules() []*netlink.Rule {
	mark := uint32(FirewallMark)
	own := netlink.NewRule()
	own.Family, own.Priority, own.Table = unix.AF_INET, RulePriority-1, unix.RT_TABLE_MAIN
	own.Mark, own.Mask = mark, &mark
	enc := netlink.NewRule()
	enc.Family, enc.Priority, enc.Table = unix.AF_INET, RulePriority, RouteTable
	if d.cfg.TunnelPort != 0 {
		enc.IPProto = unix.IPPROTO_UDP
		enc.Dport = netlink.NewRulePortRange(uint16(d.cfg.TunnelPort), uint16(d.cfg.TunnelPort))
	}
	return []*netlink.Rule{own, enc}
}

// ours reports whether a rule is one this package installs.
func ours(r netlink.Rule) bool {
	return r.Table == RouteTable || (r.Priority == RulePriority-1 && r.Mark == FirewallMark)
}

func sameRule(a netlink.Rule, b *netlink.Rule) bool {
	return a.Priority == b.Priority && a.Table == b.Table && a.Mark == b.Mark && !a.Invert && a.IPProto == b.IPProto &&
		(a.Dport == nil) == (b.Dport == nil) && (a.Dport == nil || *a.Dport == *b.Dport)
}

func (d *Device) ensureRule(h *netlink.Handle) error {
	want := d.rules()
	rules, err := h.RuleList(unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	found := make([]bool, len(want))
	for _, r := range rules {
		if !ours(r) {
			continue
		}
		keep := false
		for i, w := range want {
			if !found[i] && sameRule(r, w) {
				found[i], keep = true, true
				break
			}
		}
		if keep {
			continue
		}
		// A rule of another routing mode (or a duplicate) from an earlier run.
		if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete stale rule: %w", err)
		}
	}
	for i, w := range want {
		if found[i] {
			continue
		}
		if err := h.RuleAdd(w); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add rule: %w", err)
		}
	}
	return nil
}

// Impl is the implementation in use.
func (d *Device) Impl() Impl { return d.impl }

// PublicKey is the node's public key, base64, as published with its node.
func (d *Device) PublicKey() string { return d.key.PublicKey().String() }

// MTU is the device's MTU.
func (d *Device) MTU() int { return d.cfg.MTU }

// Strict reports whether traffic to nodes without a key is refused.
func (d *Device) Strict() bool { return d.cfg.Strict }

// peerConf is one desired peer.
type peerConf struct {
	node     string
	key      wgtypes.Key
	endpoint *net.UDPAddr
	allowed  []netip.Prefix
}

// Sync makes the device's peers exactly one per usable peer and the routing
// table match: peers of nodes gone or re-keyed are removed, new ones
// added, changed endpoints and allowed IPs replaced; unchanged peers are
// not touched (their sessions stay). A peer whose key does not decode, or
// repeats another node's, is rejected (Rejected names it) and treated as a
// node without a key; the others are configured regardless. The error is
// only about the device or the routes.
func (d *Device) Sync(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("wireguard: device closed")
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Node < peers[j].Node })
	rejected := map[string]error{}
	desired := map[wgtypes.Key]peerConf{}
	var routes []tableRoute
	var unpeered []string
	byKey := map[wgtypes.Key]string{}
	self := d.key.PublicKey()
	for _, p := range peers {
		if p.IP == d.cfg.NodeIP || !p.IP.Is4() {
			continue
		}
		dsts := d.destinations(p)
		if len(dsts) == 0 {
			continue
		}
		var key wgtypes.Key
		var err error
		if p.PublicKey != "" {
			key, err = ParsePublicKey(p.PublicKey)
			if err == nil && key == self {
				err = errors.New("WireGuard public key is this node's own")
			}
			if other, dup := byKey[key]; err == nil && dup {
				err = fmt.Errorf("WireGuard public key already published by node %s", other)
			}
			if err != nil {
				rejected[p.Node] = err
			}
		}
		if p.PublicKey == "" || err != nil {
			unpeered = append(unpeered, p.Node)
			if d.cfg.Strict {
				for _, dst := range dsts {
					routes = append(routes, tableRoute{dst: dst, prohibit: true})
				}
			}
			continue
		}
		byKey[key] = p.Node
		allowed := []netip.Prefix{}
		if p.PodCIDR.IsValid() {
			allowed = append(allowed, p.PodCIDR.Masked())
		}
		// The node's own address too: the tunnel's outer packets, and
		// its host's packets to pods here, come from it.
		allowed = append(allowed, netip.PrefixFrom(p.IP, 32))
		desired[key] = peerConf{node: p.Node, key: key, allowed: allowed,
			endpoint: &net.UDPAddr{IP: p.IP.AsSlice(), Port: d.cfg.Port}}
		for _, dst := range dsts {
			routes = append(routes, tableRoute{dst: dst})
		}
	}
	for node, err := range rejected {
		if prev, ok := d.rejected[node]; !ok || prev.Error() != err.Error() {
			d.log.Error("Rejected a node's WireGuard key; the node is left unpeered", "peer", node, "err", err)
		}
	}
	d.rejected, d.unpeered = rejected, unpeered
	errPeers := d.syncPeers(desired)
	errRoutes := d.syncRoutes(routes)
	return errors.Join(errPeers, errRoutes)
}

// destinations are what is routed into the device for a peer.
func (d *Device) destinations(p Peer) []netip.Prefix {
	if d.cfg.TunnelPort != 0 {
		return []netip.Prefix{netip.PrefixFrom(p.IP, 32)}
	}
	if p.PodCIDR.IsValid() && p.PodCIDR.Addr().Is4() {
		return []netip.Prefix{p.PodCIDR.Masked()}
	}
	return nil
}

func (d *Device) syncPeers(desired map[wgtypes.Key]peerConf) error {
	dev, err := d.client.Device(d.name)
	if err != nil {
		return fmt.Errorf("wireguard: read device: %w", err)
	}
	var changes []wgtypes.PeerConfig
	have := map[wgtypes.Key]bool{}
	for _, p := range dev.Peers {
		want, ok := desired[p.PublicKey]
		if !ok {
			changes = append(changes, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
			continue
		}
		have[p.PublicKey] = true
		if p.Endpoint == nil || !p.Endpoint.IP.Equal(want.endpoint.IP) || p.Endpoint.Port != want.endpoint.Port ||
			!samePrefixes(p.AllowedIPs, want.allowed) {
			changes = append(changes, want.config())
		}
	}
	for k, want := range desired {
		if !have[k] {
			changes = append(changes, want.config())
		}
	}
	if len(changes) == 0 {
		return nil
	}
	if err := d.client.ConfigureDevice(d.name, wgtypes.Config{Peers: changes}); err != nil {
		return fmt.Errorf("wireguard: configure %d peer changes: %w", len(changes), err)
	}
	for _, c := range changes {
		if c.Remove {
			d.log.Info("WireGuard peer removed", "publicKey", c.PublicKey.String())
		} else {
			d.log.Info("WireGuard peer set", "peer", desired[c.PublicKey].node, "publicKey", c.PublicKey.String(), "endpoint", c.Endpoint.String())
		}
	}
	return nil
}

func (p peerConf) config() wgtypes.PeerConfig {
	ipn := make([]net.IPNet, len(p.allowed))
	for i, a := range p.allowed {
		ipn[i] = net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}
	}
	return wgtypes.PeerConfig{PublicKey: p.key, Endpoint: p.endpoint, ReplaceAllowedIPs: true, AllowedIPs: ipn}
}

func samePrefixes(got []net.IPNet, want []netip.Prefix) bool {
	g := make([]string, 0, len(got))
	for _, n := range got {
		g = append(g, n.String())
	}
	w := make([]string, 0, len(want))
	for _, p := range want {
		w = append(w, p.String())
	}
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(g, w)
}

// tableRoute is a route of RouteTable: into the device, or prohibit.
type tableRoute struct {
	dst      netip.Prefix
	prohibit bool
}

func (d *Device) syncRoutes(routes []tableRoute) error {
	h, err := d.cfg.NS.Handle()
	if err != nil {
		return fmt.Errorf("wireguard routes: %w", err)
	}
	link, err := h.LinkByName(DeviceName)
	if err != nil {
		return fmt.Errorf("wireguard routes: %w", err)
	}
	want := map[netip.Prefix]tableRoute{}
	for _, r := range routes {
		want[r.dst] = r
	}
	current, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: RouteTable, Protocol: RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("wireguard routes: list: %w", err)
	}
	var errs []error
	have := map[netip.Prefix]bool{}
	for _, rt := range current {
		p, ok := prefixOf(rt.Dst)
		w, wanted := want[p]
		if ok && wanted && (rt.Type == unix.RTN_PROHIBIT) == w.prohibit && (w.prohibit || rt.LinkIndex == link.Attrs().Index) {
			have[p] = true
			continue
		}
		if err := h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("wireguard routes: delete %s: %w", rt.Dst, err))
		}
	}
	for p, r := range want {
		if have[p] {
			continue
		}
		rt := &netlink.Route{Dst: ipNet(p), Table: RouteTable, Protocol: RouteProtocol}
		if r.prohibit {
			rt.Type = unix.RTN_PROHIBIT
		} else {
			rt.LinkIndex, rt.Src, rt.Scope = link.Attrs().Index, d.cfg.NodeIP.AsSlice(), netlink.SCOPE_LINK
		}
		if err := h.RouteReplace(rt); err != nil {
			errs = append(errs, fmt.Errorf("wireguard routes: %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// Rejected returns the peers whose key was rejected at the last Sync, by
// node, with why.
func (d *Device) Rejected() map[string]error {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]error, len(d.rejected))
	for k, v := range d.rejected {
		out[k] = v
	}
	return out
}

// Unpeered lists the nodes left without a peer at the last Sync (no key,
// or a rejected one), sorted.
func (d *Device) Unpeered() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.unpeered)
}

// PeerStatus is one configured peer as the device reports it.
type PeerStatus struct {
	PublicKey     string
	Endpoint      netip.AddrPort
	AllowedIPs    []netip.Prefix
	LastHandshake time.Time
	RxBytes       int64
	TxBytes       int64
}

// Peers reads the device's peers, sorted by public key.
func (d *Device) Peers() ([]PeerStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("wireguard: device closed")
	}
	dev, err := d.client.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("wireguard: read device: %w", err)
	}
	out := make([]PeerStatus, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		ps := PeerStatus{PublicKey: p.PublicKey.String(), LastHandshake: p.LastHandshakeTime,
			RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.AddrPort()
			ps.Endpoint = netip.AddrPortFrom(ps.Endpoint.Addr().Unmap(), ps.Endpoint.Port())
		}
		for _, a := range p.AllowedIPs {
			if pf, ok := prefixOf(&a); ok {
				ps.AllowedIPs = append(ps.AllowedIPs, pf)
			}
		}
		slices.SortFunc(ps.AllowedIPs, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PublicKey < out[j].PublicKey })
	return out, nil
}

// Close releases the device. The userspace device goes with this process
// (and its TUN with it); the kernel device and the rule stay for the next
// agent, as the BPF programs do. Remove takes everything away.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if d.client != nil {
		errs = append(errs, d.client.Close())
	}
	if d.user != nil {
		// The kernel drops the device's routes with the device; until the
		// next agent sets it up again, traffic to those peers is refused
		// rather than sent in clear.
		errs = append(errs, d.failClosed())
		errs = append(errs, d.user.close())
	}
	return errors.Join(errs...)
}

// failClosed turns every route into the device into a prohibit route.
func (d *Device) failClosed() error {
	h, err := d.cfg.NS.Handle()
	if err != nil {
		return err
	}
	current, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: RouteTable, Protocol: RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("wireguard: list routes: %w", err)
	}
	var errs []error
	for _, rt := range current {
		if rt.Type == unix.RTN_PROHIBIT {
			continue
		}
		p := &netlink.Route{Dst: rt.Dst, Table: RouteTable, Protocol: RouteProtocol, Type: unix.RTN_PROHIBIT}
		if err := h.RouteReplace(p); err != nil {
			errs = append(errs, fmt.Errorf("wireguard: prohibit %s: %w", rt.Dst, err))
		}
	}
	return errors.Join(errs...)
}

// Remove closes the device and deletes it with its rule and routes
// (uninstall, or switching encryption off).
func (d *Device) Remove() error {
	err := d.Close()
	return errors.Join(err, Delete(d.cfg.NS))
}

// Delete removes a WireGuard device, rule and routes left in the namespace
// (by this package), if any: a node that runs without encryption must not
// keep steering traffic into a device that is gone or stale.
func Delete(ns *netns.NS) error {
	h, err := ns.Handle()
	if err != nil {
		return fmt.Errorf("wireguard: delete: %w", err)
	}
	var errs []error
	if link, err := h.LinkByName(DeviceName); err == nil {
		errs = append(errs, h.LinkDel(link))
	}
	errs = append(errs, removeRouting(ns))
	return errors.Join(errs...)
}

func removeRouting(ns *netns.NS) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	var errs []error
	rules, err := h.RuleList(unix.AF_INET)
	if err != nil {
		return fmt.Errorf("wireguard: list rules: %w", err)
	}
	for _, r := range rules {
		if !ours(r) {
			continue
		}
		if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("wireguard: delete rule: %w", err))
		}
	}
	routes, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("wireguard: list routes: %w", err)
	}
	for _, rt := range routes {
		if err := h.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("wireguard: delete route %s: %w", rt.Dst, err))
		}
	}
	return errors.Join(errs...)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// tunAvailable reports whether the userspace implementation can run.
func tunAvailable() error {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("%w: %v", ErrNoImplementation, err)
	}
	return nil
}
