package remote

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/etcdtest"
	"github.com/meshbed/meshbed/mesh/wire"
)

const wait = 15 * time.Second

func TestConnectAndSync(t *testing.T) {
	srv := etcdtest.Start(t)
	pub := newPublisher(t, srv.Client(), "cluster2", 2)
	// Entries without canaries must not be taken as complete.
	pub.config()
	pub.service("rebel-base", "10.20.0.7")

	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	m, rec := startManager(t, fastConfig(t, dir))

	rec.expect(wait, "cluster2", func(v *view) error {
		if !v.up || v.id != 2 {
			return fmt.Errorf("up=%v id=%d", v.up, v.id)
		}
		return nil
	})
	// The readers wait for the canaries: nothing delivered, not synced.
	time.Sleep(300 * time.Millisecond) // a negative: give a wrong delivery the chance to happen
	if v := rec.get("cluster2"); len(v.services) != 0 || v.synced || v.reachable {
		t.Fatalf("delivered before the canaries: %+v", v)
	}
	select {
	case <-m.ServicesSynced():
		t.Fatal("ServicesSynced closed before the cluster synced")
	default:
	}

	pub.basic()
	rec.expect(wait, "cluster2", func(v *view) error {
		switch {
		case !v.synced || !v.reachable:
			return fmt.Errorf("synced=%v reachable=%v", v.synced, v.reachable)
		case v.services["default/rebel-base"] != "10.20.0.7":
			return fmt.Errorf("services %v", v.services)
		case !v.nodes["node-1"] || len(v.ips) != 1 || len(v.identities) != 1:
			return fmt.Errorf("nodes %v ips %v identities %v", v.nodes, v.ips, v.identities)
		}
		return nil
	})
	select {
	case <-m.ServicesSynced():
	case <-time.After(wait):
		t.Fatal("ServicesSynced not closed")
	}
	// Reachable was reported with the services already delivered.
	v := rec.get("cluster2")
	if first := v.reachableLog[0]; !first.reachable || first.services["default/rebel-base"] != "10.20.0.7" {
		t.Errorf("first Reachable call %+v", first)
	}

	// Live changes flow through.
	pub.service("rebel-base", "10.20.0.7", "10.20.0.8")
	pub.service("other")
	rec.expect(wait, "cluster2", wantServices(map[string]string{"default/rebel-base": "10.20.0.7,10.20.0.8", "default/other": ""}))
	pub.deleteService("other")
	rec.expect(wait, "cluster2", wantServices(map[string]string{"default/rebel-base": "10.20.0.7,10.20.0.8"}))

	st, _ := statusOf(m, "cluster2")
	if !st.Running || !st.Up || !st.Reachable || st.ID != 2 || st.Cached || st.LastErr != nil {
		t.Errorf("status %+v", st)
	}
}

func TestConfigDirectory(t *testing.T) {
	a, b := etcdtest.Start(t), etcdtest.Start(t)
	pa := newPublisher(t, a.Client(), "cluster2", 2)
	pa.basic()
	// b serves the same cluster with other state (a migrated apiserver).
	pb := newPublisher(t, b.Client(), "cluster2", 2)
	pb.config()
	pb.service("moved", "10.20.9.9")
	pb.identity(pb.localIdentity(1), "rebel-base")
	pb.canaries()

	dir := t.TempDir()
	m, rec := startManager(t, fastConfig(t, dir))

	t.Run("file added", func(t *testing.T) {
		writeConfig(t, dir, "cluster2", a.Endpoints(), "")
		rec.t = t
		rec.expect(wait, "cluster2", wantServices(map[string]string{"default/rebel-base": "10.20.0.7"}))
		rec.expect(wait, "cluster2", isReachable(true))
	})
	t.Run("invalid file keeps the cluster", func(t *testing.T) {
		writeFileAtomic(t, filepath.Join(dir, "cluster2"), "endpoints: [ftp://nowhere]\n")
		testenv.Eventually(t, wait, func() error {
			st, _ := statusOf(m, "cluster2")
			if st.ConfigErr == nil || !strings.Contains(st.ConfigErr.Error(), filepath.Join(dir, "cluster2")) || !errors.Is(st.ConfigErr, ErrInvalidConfig) {
				return fmt.Errorf("config error %v, want one naming the file", st.ConfigErr)
			}
			if !st.Running || !st.Reachable {
				return fmt.Errorf("cluster disturbed by an invalid file: %+v", st)
			}
			return nil
		})
	})
	t.Run("invalid names reported", func(t *testing.T) {
		writeConfig(t, dir, "Not_A_Cluster", a.Endpoints(), "")
		writeConfig(t, dir, localName, a.Endpoints(), "")
		testenv.Eventually(t, wait, func() error {
			for _, n := range []string{"Not_A_Cluster", localName} {
				st, ok := statusOf(m, n)
				if !ok || st.ConfigErr == nil || !strings.Contains(st.ConfigErr.Error(), n) || st.Running {
					return fmt.Errorf("%s: %+v", n, st)
				}
			}
			return nil
		})
		os.Remove(filepath.Join(dir, "Not_A_Cluster"))
		os.Remove(filepath.Join(dir, localName))
	})
	t.Run("changed file moves the cluster without stale state", func(t *testing.T) {
		n := len(rec.get("cluster2").reachableLog)
		writeConfig(t, dir, "cluster2", b.Endpoints(), "")
		rec.expect(wait, "cluster2", wantServices(map[string]string{"default/moved": "10.20.9.9"}))
		rec.expect(wait, "cluster2", func(v *view) error {
			if len(v.nodes) != 0 || len(v.ips) != 0 || len(v.identities) != 1 {
				return fmt.Errorf("stale entries: nodes %v ips %v identities %v", v.nodes, v.ips, v.identities)
			}
			return nil
		})
		st, _ := statusOf(m, "cluster2")
		if st.ConfigErr != nil {
			t.Errorf("config error remains: %v", st.ConfigErr)
		}
		// A reconnect for a new config is not a loss.
		if log := rec.get("cluster2").reachableLog[n:]; len(log) != 0 {
			t.Errorf("reachability changed on a config change: %+v", log)
		}
	})
	t.Run("kubernetes secret symlink swap", func(t *testing.T) {
		// The layout of a mounted Secret: name -> ..data/name,
		// ..data -> ..<timestamp>; an update swaps ..data atomically.
		kdir := t.TempDir()
		ts1 := filepath.Join(kdir, "..2026_01")
		os.Mkdir(ts1, 0o700)
		writeConfig(t, ts1, "cluster3", a.Endpoints(), "")
		pc := newPublisher(t, a.Client(), "cluster3", 3)
		pc.basic()
		mustSymlink(t, "..2026_01", filepath.Join(kdir, "..data"))
		mustSymlink(t, filepath.Join("..data", "cluster3"), filepath.Join(kdir, "cluster3"))
		_, krec := startManager(t, fastConfig(t, kdir))
		krec.expect(wait, "cluster3", wantServices(map[string]string{"default/rebel-base": "10.20.0.7"}))

		pd := newPublisher(t, b.Client(), "cluster3", 3)
		pd.config()
		pd.service("swapped")
		pd.canaries()
		ts2 := filepath.Join(kdir, "..2026_02")
		os.Mkdir(ts2, 0o700)
		writeConfig(t, ts2, "cluster3", b.Endpoints(), "")
		mustSymlink(t, "..2026_02", filepath.Join(kdir, "..data.tmp"))
		if err := os.Rename(filepath.Join(kdir, "..data.tmp"), filepath.Join(kdir, "..data")); err != nil {
			t.Fatal(err)
		}
		krec.expect(wait, "cluster3", wantServices(map[string]string{"default/swapped": ""}))
	})
	t.Run("file removed", func(t *testing.T) {
		os.Remove(filepath.Join(dir, "cluster2"))
		testenv.Eventually(t, wait, func() error {
			if rec.get("cluster2") != nil {
				return errors.New("cluster2 still known to the sink")
			}
			if _, ok := statusOf(m, "cluster2"); ok {
				return errors.New("cluster2 still in Status")
			}
			return nil
		})
	})
}

func mustSymlink(t testing.TB, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func TestClusterConfigValidation(t *testing.T) {
	tests := []struct {
		name         string
		id           uint32
		maxConnected uint32
		want         string
	}{
		{"local ID", localID, 255, `cluster ID 1 is already used by cluster "cluster1"`},
		{"ID out of range", 256, 255, "out of range"},
		{"ID zero", 0, 255, "out of range"},
		{"other mesh size", 2, 511, "maxConnectedClusters 511"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := etcdtest.Start(t)
			pub := newPublisher(t, srv.Client(), "cluster2", tt.id)
			pub.configWith(tt.id, tt.maxConnected)
			pub.service("rebel-base", "10.20.0.7")
			pub.canaries()
			dir := t.TempDir()
			writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
			m, rec := startManager(t, fastConfig(t, dir))
			testenv.Eventually(t, wait, func() error {
				st, _ := statusOf(m, "cluster2")
				if st.LastErr == nil || !strings.Contains(st.LastErr.Error(), tt.want) {
					return fmt.Errorf("last error %v, want %q", st.LastErr, tt.want)
				}
				return nil
			})
			if v := rec.get("cluster2"); v.up || len(v.services) != 0 || v.reachable {
				t.Fatalf("invalid cluster used: %+v", v)
			}
		})
	}
}

func TestDuplicateClusterID(t *testing.T) {
	a, b := etcdtest.Start(t), etcdtest.Start(t)
	newPublisher(t, a.Client(), "cluster2", 2).basic()
	pb := newPublisher(t, b.Client(), "cluster3", 2) // claims cluster2's ID
	pb.basic()

	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", a.Endpoints(), "")
	m, rec := startManager(t, fastConfig(t, dir))
	rec.expect(wait, "cluster2", isReachable(true))
	writeConfig(t, dir, "cluster3", b.Endpoints(), "")

	testenv.Eventually(t, wait, func() error {
		st, _ := statusOf(m, "cluster3")
		if st.LastErr == nil || !strings.Contains(st.LastErr.Error(), `cluster "cluster3": cluster ID 2 is already used by cluster "cluster2"`) {
			return fmt.Errorf("cluster3 error %v", st.LastErr)
		}
		return nil
	})
	if v := rec.get("cluster3"); v.up || len(v.services) != 0 {
		t.Fatalf("duplicate cluster used: %+v", v)
	}
	if v := rec.get("cluster2"); !v.reachable || v.services["default/rebel-base"] == "" {
		t.Fatalf("first cluster disturbed: %+v", v)
	}

	// Fixed at the source: cluster3 gets its own ID and is retried.
	pb.id = 3
	pb.basic()
	rec.expect(wait, "cluster3", func(v *view) error {
		if !v.up || v.id != 3 || !v.reachable || v.services["default/rebel-base"] != "10.20.0.7" {
			return fmt.Errorf("%+v", v)
		}
		return nil
	})
}

func TestUntrustedEntries(t *testing.T) {
	srv := etcdtest.Start(t)
	pub := newPublisher(t, srv.Client(), "cluster2", 2)
	pub.basic()
	// Next to the good entries: bad ones of every kind.
	pub.identity(3<<16|5, "stolen")                                                                 // cluster 3's range
	pub.ip("10.20.0.66", 3<<16|5)                                                                   // identity out of range
	pub.put(wire.ServiceKey("cluster2", "default", "broken"), `{"cluster":`)                        // malformed JSON
	pub.put(wire.ServiceKey("cluster2", "default", "liar"), mustJSON(t, pub.serviceValue("other"))) // name ≠ key
	bad := pub.serviceValue("impostor", "10.20.0.9")
	bad.ClusterID = 7
	pub.put(wire.ServiceKey("cluster2", "default", "impostor"), mustJSON(t, bad))
	pub.put(wire.NodeKey("cluster2", "node-x"), `null`)

	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	m, rec := startManager(t, fastConfig(t, dir))
	rec.expect(wait, "cluster2", isReachable(true))
	rec.expect(wait, "cluster2", complete)
	// The bad entries sort around the good ones: once all six have been
	// read (and rejected), check that none was delivered.
	testenv.Eventually(t, wait, func() error {
		if got := rejectedCount(m, "cluster2"); got < 6 {
			return fmt.Errorf("%d entries rejected, want 6", got)
		}
		return nil
	})
	v := rec.get("cluster2")
	if !maps.Equal(v.services, map[string]string{"default/rebel-base": "10.20.0.7"}) ||
		len(v.identities) != 1 || len(v.ips) != 1 || len(v.nodes) != 1 {
		t.Fatalf("view after sync: services %v identities %v ips %v nodes %v", v.services, v.identities, v.ips, v.nodes)
	}

	// A good entry turning bad keeps its last good value (and the update
	// after it, which proves the bad one was read, is applied); a later
	// good value replaces it, a delete removes it.
	before := maps.Clone(rec.get("cluster2").ips)
	pub.ip("10.20.0.7", 0)
	pub.put(wire.ServiceKey("cluster2", "default", "rebel-base"), `{"cluster":`)
	pub.service("marker", "10.20.0.5")
	rec.expect(wait, "cluster2", func(v *view) error {
		if v.services["default/marker"] != "10.20.0.5" {
			return fmt.Errorf("marker not applied yet: services %v", v.services)
		}
		if !maps.Equal(v.ips, before) || v.services["default/rebel-base"] != "10.20.0.7" || len(v.identities) != 1 {
			return fmt.Errorf("last good values lost: ips %v (want %v) services %v identities %v", v.ips, before, v.services, v.identities)
		}
		return nil
	})
	if got := rejectedCount(m, "cluster2"); got < 2 {
		t.Errorf("Rejected = %d, want at least the 2 bad overwrites", got)
	}
	pub.service("rebel-base", "10.20.0.7", "10.20.0.8")
	pub.del(wire.IPKey("10.20.0.7"))
	rec.expect(wait, "cluster2", func(v *view) error {
		if len(v.ips) != 0 || v.services["default/rebel-base"] != "10.20.0.7,10.20.0.8" || len(v.identities) != 1 {
			return fmt.Errorf("ips %v services %v identities %v", v.ips, v.services, v.identities)
		}
		return nil
	})
}

func TestRemoteRestartNoStale(t *testing.T) {
	srv := etcdtest.Start(t)
	pub := newPublisher(t, srv.Client(), "cluster2", 2)
	pub.basic()
	pub.service("old", "10.20.0.99")

	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	_, rec := startManager(t, fastConfig(t, dir))
	rec.expect(wait, "cluster2", wantServices(map[string]string{"default/rebel-base": "10.20.0.7", "default/old": "10.20.0.99"}))

	// The ephemeral etcd restarts empty; the apiserver rewrites a changed state.
	srv.Restart()
	pub.kv = srv.Client()
	pub.config()
	pub.identity(pub.localIdentity(2), "new")
	pub.node("node-2", "172.18.0.4")
	pub.ip("10.20.0.8", pub.localIdentity(2))
	pub.service("rebel-base", "10.20.0.8")
	pub.canaries()

	rec.expect(wait, "cluster2", func(v *view) error {
		switch {
		case !maps.Equal(v.services, map[string]string{"default/rebel-base": "10.20.0.8"}):
			return fmt.Errorf("services %v", v.services)
		case len(v.nodes) != 1 || !v.nodes["node-2"]:
			return fmt.Errorf("nodes %v", v.nodes)
		case len(v.ips) != 1 || len(v.identities) != 1 || v.identities[pub.localIdentity(2)] == "":
			return fmt.Errorf("ips %v identities %v", v.ips, v.identities)
		case !v.reachable:
			return errors.New("not reachable")
		}
		return nil
	})
}

// TestClusterIDChange: a remote that comes back with another ID is
// announced again and its state revalidated against the new ID.
func TestClusterIDChange(t *testing.T) {
	srv := etcdtest.Start(t)
	pub := newPublisher(t, srv.Client(), "cluster2", 2)
	pub.basic()
	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", srv.Endpoints(), "")
	_, rec := startManager(t, fastConfig(t, dir))
	rec.expect(wait, "cluster2", complete)

	pub.id = 4
	pub.config()
	rec.expect(wait, "cluster2", func(v *view) error {
		// Everything was written for ID 2: now out of range or naming
		// the wrong cluster ID, so all of it goes.
		if v.id != 4 || len(v.services) != 0 || len(v.identities) != 0 || len(v.ips) != 0 || len(v.nodes) != 0 {
			return fmt.Errorf("id %d services %v identities %v ips %v nodes %v", v.id, v.services, v.identities, v.ips, v.nodes)
		}
		return nil
	})
	pub.basic() // rewritten for ID 4
	rec.expect(wait, "cluster2", complete)
	if v := rec.get("cluster2"); v.identities[pub.localIdentity(1)] == "" {
		t.Fatalf("identities %v", v.identities)
	}
}

// rejectedCount is ClusterStatus.Rejected of cluster name.
func rejectedCount(m *Manager, name string) int {
	for _, st := range m.Status() {
		if st.Name == name {
			return st.Rejected
		}
	}
	return -1
}
