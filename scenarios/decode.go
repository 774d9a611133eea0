package scenarios

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Load reads, decodes and validates the scenario file at path. Manifest
// files are read relative to the scenario file's directory. The error, if
// any, joins one *FieldError per problem found.
func Load(path string) (*Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &FieldError{File: path, Msg: fmt.Sprintf("cannot read: %v", unwrapPath(err))}
	}
	return Parse(path, data)
}

// Parse decodes and validates a scenario file's content; file names it in
// errors and anchors relative manifest paths.
func Parse(file string, data []byte) (*Scenario, error) {
	d := &decoder{file: file}
	sc := d.scenario(data)
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	sc.File = file
	return sc, nil
}

// unwrapPath drops the path from a *fs.PathError, which the caller names
// already.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// state is what earlier parts of the file established, for checking
// references: which objects exist in each cluster, and which traffic
// streams run, at the current step.
type state struct {
	topo *Topology
	// clusterNames holds every cluster the topology declares, even one
	// whose other fields are invalid, so that a bad ID does not turn every
	// reference to it into a second error.
	clusterNames map[string]bool
	declared     []string
	objects      map[string]map[objectKey]bool
	// deletedBy remembers which step deleted an object, for the message.
	deletedBy map[string]map[objectKey]int
	// uncertain marks clusters whose objects are not fully known because a
	// manifest for them did not parse; references there are not checked.
	uncertain map[string]bool
	// traffic maps a running stream to the step that started it; stopped
	// to the step that stopped it.
	traffic map[string]int
	stopped map[string]int
	// added counts the nodes addNode steps so far add to a cluster.
	added map[string]int
}

type objectKey struct{ kind, namespace, name string }

func (k objectKey) String() string {
	if k.namespace == "" {
		return fmt.Sprintf("%s %q", k.kind, k.name)
	}
	return fmt.Sprintf("%s %q", k.kind, k.namespace+"/"+k.name)
}

func (d *decoder) scenario(data []byte) *Scenario {
	docs := splitDocuments(data)
	if len(docs) == 0 {
		d.errorf("", "empty file")
		return nil
	}
	if len(docs) > 1 {
		d.errorf("", "%d YAML documents: a scenario file holds exactly one", len(docs))
		return nil
	}
	root, err := decodeYAML(docs[0])
	if err != nil {
		d.errorf("", "%v", err)
		return nil
	}
	m := d.object("", root, "apiVersion", "kind", "metadata", "spec")
	if m == nil {
		return nil
	}
	if v, ok := d.required("", m, "apiVersion"); ok {
		if s, ok := d.str("apiVersion", v); ok && s != APIVersion {
			d.errorf("apiVersion", "%q is not supported: use %s", s, APIVersion)
		}
	}
	if v, ok := d.required("", m, "kind"); ok {
		if s, ok := d.str("kind", v); ok && s != Kind {
			d.errorf("kind", "%q is not %s", s, Kind)
		}
	}
	sc := &Scenario{}
	if v, ok := d.required("", m, "metadata"); ok {
		if md := d.object("metadata", v, "name", "description"); md != nil {
			if v, ok := d.required("metadata", md, "name"); ok {
				sc.Name, _ = d.nonEmpty("metadata.name", v)
			}
			if v, ok := get(md, "description"); ok {
				sc.Description, _ = d.str("metadata.description", v)
			}
		}
	}
	v, ok := d.required("", m, "spec")
	if !ok {
		return sc
	}
	spec := d.object("spec", v, "seed", "topology", "manifests", "steps")
	if spec == nil {
		return sc
	}
	if v, ok := get(spec, "seed"); ok {
		seed, _ := d.integer("spec.seed", v, -1<<63, 1<<63-1)
		sc.Seed = seed
	}
	st := &state{
		topo:         &sc.Topology,
		clusterNames: map[string]bool{},
		objects:      map[string]map[objectKey]bool{},
		deletedBy:    map[string]map[objectKey]int{},
		uncertain:    map[string]bool{},
		traffic:      map[string]int{},
		stopped:      map[string]int{},
	}
	if v, ok := d.required("spec", spec, "topology"); ok {
		d.topology("spec.topology", v, st)
	} else {
		// Nothing can be resolved without clusters; the rest would only
		// repeat that.
		return sc
	}
	if v, ok := get(spec, "manifests"); ok {
		if l, ok := d.list("spec.manifests", v); ok {
			for i, item := range l {
				field := index("spec.manifests", i)
				mf, ok := d.manifest(field, item, "clusters", st)
				if ok {
					sc.Manifests = append(sc.Manifests, mf)
				}
			}
		}
	}
	if v, ok := get(spec, "steps"); ok {
		if l, ok := d.list("spec.steps", v); ok {
			for i, item := range l {
				if step, ok := d.stepAt(i+1, item, st); ok {
					sc.Steps = append(sc.Steps, step)
				}
			}
		}
	}
	return sc
}

func (d *decoder) topology(field string, v any, st *state) {
	m := d.object(field, v, "routing", "kvstoremesh", "remoteLoss", "encryption", "clusters", "connections")
	if m == nil {
		return
	}
	t := st.topo
	routing, _ := d.enum(field, m, "routing", string(RoutingTunnel), string(RoutingTunnel), string(RoutingNative))
	t.Routing = Routing(routing)
	loss, _ := d.enum(field, m, "remoteLoss", string(RemoteLossWithdraw),
		string(RemoteLossWithdraw), string(RemoteLossFailStatic))
	t.RemoteLoss = RemoteLoss(loss)
	enc, _ := d.enum(field, m, "encryption", string(EncryptionNone), string(EncryptionNone), string(EncryptionWireGuard))
	t.Encryption = Encryption(enc)
	t.KVStoreMesh = true
	if v, ok := get(m, "kvstoremesh"); ok {
		if b, ok := d.boolean(join(field, "kvstoremesh"), v); ok {
			t.KVStoreMesh = b
		}
	}
	cv, ok := d.required(field, m, "clusters")
	if !ok {
		return
	}
	cl, ok := d.list(join(field, "clusters"), cv)
	if !ok {
		return
	}
	if len(cl) == 0 {
		d.errorf(join(field, "clusters"), "at least one cluster is required")
		return
	}
	byName := map[string]string{}
	byID := map[int]string{}
	type cidr struct {
		prefix  netip.Prefix
		cluster string
		what    string // "pod CIDR", "service CIDR"
		field   string
		def     bool
	}
	var cidrs []cidr
	for i, item := range cl {
		cf := index(join(field, "clusters"), i)
		cm := d.object(cf, item, "name", "id", "nodes", "podCIDR", "serviceCIDR")
		if cm == nil {
			continue
		}
		c := Cluster{Nodes: DefaultNodes}
		valid := true
		if v, ok := d.required(cf, cm, "name"); ok {
			if s, ok := d.str(join(cf, "name"), v); ok {
				c.Name = s
				if !st.clusterNames[s] {
					st.declared = append(st.declared, s)
				}
				st.clusterNames[s] = true
				if err := checkClusterName(s); err != nil {
					d.errorf(join(cf, "name"), "%v", err)
					valid = false
				} else if prev, dup := byName[s]; dup {
					d.errorf(join(cf, "name"), "duplicate cluster name %q (also %s)", s, prev)
					valid = false
				} else {
					byName[s] = cf
				}
			} else {
				valid = false
			}
		} else {
			valid = false
		}
		if v, ok := d.required(cf, cm, "id"); ok {
			if id, ok := d.integer(join(cf, "id"), v, 1, MaxClusterID); ok {
				c.ID = int(id)
				if prev, dup := byID[c.ID]; dup {
					d.errorf(join(cf, "id"), "cluster ID %d of %q is already used by %q", c.ID, c.Name, prev)
					valid = false
				} else {
					byID[c.ID] = c.Name
				}
			} else {
				valid = false
			}
		} else {
			valid = false
		}
		if v, ok := get(cm, "nodes"); ok {
			if n, ok := d.integer(join(cf, "nodes"), v, 1, MaxNodes); ok {
				c.Nodes = int(n)
			} else {
				valid = false
			}
		}
		for _, p := range []struct {
			key, what string
			dst       *netip.Prefix
			def       func(int) netip.Prefix
		}{
			{"podCIDR", "pod CIDR", &c.PodCIDR, DefaultPodCIDR},
			{"serviceCIDR", "service CIDR", &c.ServiceCIDR, DefaultServiceCIDR},
		} {
			pf := join(cf, p.key)
			v, ok := get(cm, p.key)
			if !ok {
				if c.ID == 0 {
					continue // no default without a valid ID
				}
				*p.dst = p.def(c.ID)
				cidrs = append(cidrs, cidr{*p.dst, c.Name, p.what, pf, true})
				continue
			}
			s, ok := d.str(pf, v)
			if !ok {
				valid = false
				continue
			}
			prefix, err := parseCIDR(s)
			if err != nil {
				d.errorf(pf, "%v", err)
				valid = false
				continue
			}
			*p.dst = prefix
			cidrs = append(cidrs, cidr{prefix, c.Name, p.what, pf, false})
		}
		if c.PodCIDR.IsValid() && c.Nodes > NodeCapacity(c.PodCIDR) {
			pf := join(cf, "podCIDR")
			if _, given := get(cm, "podCIDR"); !given {
				pf = join(cf, "nodes")
			}
			d.errorf(pf, "pod CIDR %s has room for %d nodes (each takes a /24 of it, node-i the i-th), not %d: want a /%d or wider",
				c.PodCIDR, NodeCapacity(c.PodCIDR), c.Nodes, podCIDRFor(c.Nodes))
			valid = false
		}
		if valid {
			t.Clusters = append(t.Clusters, c)
		}
	}
	// Overlaps are reported on the later CIDR, naming the earlier one's
	// cluster, so each clash appears once.
	for i, b := range cidrs {
		for _, a := range cidrs[:i] {
			if !a.prefix.Overlaps(b.prefix) {
				continue
			}
			note := func(c cidr) string {
				if c.def {
					return " (default)"
				}
				return ""
			}
			if a.cluster == b.cluster {
				d.errorf(b.field, "%s %s%s of cluster %q overlaps its own %s %s%s",
					b.what, b.prefix, note(b), b.cluster, a.what, a.prefix, note(a))
				continue
			}
			d.errorf(b.field, "%s %s%s of cluster %q overlaps the %s %s%s of cluster %q",
				b.what, b.prefix, note(b), b.cluster, a.what, a.prefix, note(a), a.cluster)
		}
	}

	cv, ok = get(m, "connections")
	if !ok {
		t.Connections = [][2]string{}
		for i, a := range t.Clusters {
			for _, b := range t.Clusters[i+1:] {
				t.Connections = append(t.Connections, [2]string{a.Name, b.Name})
			}
		}
		return
	}
	conns, ok := d.list(join(field, "connections"), cv)
	if !ok {
		return
	}
	t.Connections = [][2]string{}
	seen := map[[2]string]string{}
	for i, item := range conns {
		pf := index(join(field, "connections"), i)
		pair, ok := item.([]any)
		if !ok || len(pair) != 2 {
			d.errorf(pf, "must be a pair of cluster names like [cluster1, cluster2], got %s", describe(item))
			continue
		}
		var names [2]string
		good := true
		for j, v := range pair {
			s, ok := d.str(index(pf, j), v)
			if !ok {
				good = false
				continue
			}
			if !st.clusterNames[s] {
				d.errorf(index(pf, j), "unknown cluster %q%s", s, knownClusters(st))
				good = false
			}
			names[j] = s
		}
		if !good {
			continue
		}
		if names[0] == names[1] {
			d.errorf(pf, "connects cluster %q to itself", names[0])
			continue
		}
		key := names
		if key[0] > key[1] {
			key[0], key[1] = key[1], key[0]
		}
		if prev, dup := seen[key]; dup {
			d.errorf(pf, "clusters %q and %q are already connected by %s", names[0], names[1], prev)
			continue
		}
		seen[key] = pf
		t.Connections = append(t.Connections, names)
	}
}

// checkClusterName applies the mesh's cluster name rules.
func checkClusterName(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > MaxClusterNameLen:
		return fmt.Errorf("%q is longer than %d characters", s, MaxClusterNameLen)
	case strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789-") != "":
		return fmt.Errorf("%q may only hold lower-case letters, digits and '-'", s)
	case s[0] == '-' || s[len(s)-1] == '-':
		return fmt.Errorf("%q must not start or end with '-'", s)
	}
	return nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR like 10.10.0.0/16", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not IPv4: the simulator is IPv4 only", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set: did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// knownClusters lists the topology's clusters for "unknown cluster"
// messages.
func knownClusters(st *state) string {
	if len(st.declared) == 0 {
		return ""
	}
	return " (clusters: " + strings.Join(st.declared, ", ") + ")"
}

// cluster resolves a cluster reference.
func (d *decoder) cluster(field string, v any, st *state) (string, bool) {
	s, ok := d.str(field, v)
	if !ok {
		return "", false
	}
	if !st.clusterNames[s] {
		d.errorf(field, "unknown cluster %q%s", s, knownClusters(st))
		return "", false
	}
	return s, true
}

// clusterList resolves a non-empty list of distinct cluster names.
func (d *decoder) clusterList(field string, v any, st *state) ([]string, bool) {
	l, ok := d.list(field, v)
	if !ok {
		return nil, false
	}
	if len(l) == 0 {
		d.errorf(field, "must name at least one cluster")
		return nil, false
	}
	var out []string
	good := true
	for i, item := range l {
		c, ok := d.cluster(index(field, i), item, st)
		if !ok {
			good = false
			continue
		}
		if contains(out, c) {
			d.errorf(index(field, i), "cluster %q is listed twice", c)
			good = false
			continue
		}
		out = append(out, c)
	}
	return out, good
}

// manifest decodes spec.manifests[i] or an apply step: the target clusters
// (clustersKey "clusters"; an apply step also takes "cluster") and the
// objects from file or inline. The objects join st for later references.
func (d *decoder) manifest(field string, v any, clustersKey string, st *state) (Manifest, bool) {
	keys := []string{"clusters", "file", "inline"}
	if clustersKey == "cluster" {
		keys = append(keys, "cluster")
	}
	m := d.object(field, v, keys...)
	if m == nil {
		return Manifest{}, false
	}
	var mf Manifest
	good := true
	one, hasOne := get(m, "cluster")
	many, hasMany := get(m, "clusters")
	switch {
	case hasOne && hasMany:
		d.errorf(field, "give either cluster or clusters, not both")
		good = false
	case hasOne && clustersKey == "cluster":
		c, ok := d.cluster(join(field, "cluster"), one, st)
		good = ok
		mf.Clusters = []string{c}
	case hasMany:
		mf.Clusters, good = d.clusterList(join(field, "clusters"), many, st)
	default:
		if clustersKey == "cluster" {
			d.errorf(field, "cluster or clusters is required")
		} else {
			d.errorf(join(field, "clusters"), "required")
		}
		good = false
	}
	file, hasFile := get(m, "file")
	inline, hasInline := get(m, "inline")
	var objects []Object
	parsed := false
	switch {
	case hasFile && hasInline:
		d.errorf(field, "give either file or inline, not both")
	case hasFile:
		ff := join(field, "file")
		if name, ok := d.nonEmpty(ff, file); ok {
			mf.File = name
			path := name
			if !filepath.IsAbs(path) {
				path = filepath.Join(filepath.Dir(d.file), path)
			}
			data, err := readManifest(path)
			if err != nil {
				d.errorf(ff, "cannot read %q: %v", name, err)
			} else {
				objects, parsed = d.objects(ff, name+": ", data)
			}
		}
	case hasInline:
		inf := join(field, "inline")
		if text, ok := d.str(inf, inline); ok {
			objects, parsed = d.objects(inf, "", []byte(text))
		}
	default:
		d.errorf(field, "file or inline is required")
	}
	for _, c := range mf.Clusters {
		if !parsed {
			st.uncertain[c] = true
			continue
		}
		for _, o := range objects {
			st.add(c, objectKey{o.Kind, o.Namespace, o.Name})
		}
	}
	mf.Objects = objects
	return mf, good && parsed
}

func (st *state) add(cluster string, k objectKey) {
	if st.objects[cluster] == nil {
		st.objects[cluster] = map[objectKey]bool{}
	}
	st.objects[cluster][k] = true
	delete(st.deletedBy[cluster], k)
}

func (st *state) remove(cluster string, k objectKey, step int) {
	if st.deletedBy[cluster] == nil {
		st.deletedBy[cluster] = map[objectKey]int{}
	}
	gone := []objectKey{k}
	if k.kind == "Namespace" {
		// Deleting a namespace deletes what is in it.
		for o := range st.objects[cluster] {
			if o.namespace == k.name {
				gone = append(gone, o)
			}
		}
	}
	for _, o := range gone {
		delete(st.objects[cluster], o)
		st.deletedBy[cluster][o] = step
	}
}

// haveObject reports whether cluster holds k at this point of the file,
// reporting it at field when it does not.
func (d *decoder) haveObject(field, cluster string, k objectKey, st *state) bool {
	if st.uncertain[cluster] || st.objects[cluster][k] {
		return true
	}
	if step, ok := st.deletedBy[cluster][k]; ok {
		d.errorf(field, "%s in cluster %q was deleted by step %d", k, cluster, step)
		return false
	}
	d.errorf(field, "no %s in cluster %q (objects come from spec.manifests and earlier apply steps)", k, cluster)
	return false
}

// maxManifestSize bounds a manifest file; real ones are a few kilobytes.
const maxManifestSize = 4 << 20

// readManifest reads a regular file of at most maxManifestSize bytes, so that
// a path like /dev/zero fails instead of hanging.
func readManifest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, unwrapPath(err)
	}
	if !info.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if info.Size() > maxManifestSize {
		return nil, fmt.Errorf("larger than %d MiB", maxManifestSize>>20)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, unwrapPath(err)
	}
	return data, nil
}
