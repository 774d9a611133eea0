package remote

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/mesh/pki"
)

// poller runs readConfigs polls of a Manager and counts the files each
// one reads.
type poller struct {
	t     *testing.T
	m     *Manager
	reads atomic.Int64
	read  []string
}

func newPoller(t *testing.T, dir string) *poller {
	m, err := New(fastConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	p := &poller{t: t, m: m}
	m.files.readFile = func(path string) ([]byte, error) {
		p.reads.Add(1)
		p.read = append(p.read, filepath.Base(path))
		return os.ReadFile(path)
	}
	return p
}

// poll runs one poll and returns what it found, the errors, and the base
// names of the files it read.
func (p *poller) poll() (map[string]*loadedConfig, map[string]error, []string) {
	p.t.Helper()
	p.read = nil
	found, errs, err := p.m.readConfigs()
	if err != nil {
		p.t.Fatal(err)
	}
	return found, errs, p.read
}

// TestPollReadsOnlyChanges: once files are older than the racy window, a
// poll reads nothing unless a stamp changed, and then only the changed
// files; a config whose content did not change keeps its loadedConfig (so
// its connection); and every real change is still seen.
func TestPollReadsOnlyChanges(t *testing.T) {
	ca, err := pki.NewCA("meshbed-test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tlsLines := writeClientFiles(t, dir, "cluster2", ca, ca)
	writeConfig(t, dir, "cluster2", []string{"https://127.0.0.1:2379"}, tlsLines)
	writeConfig(t, dir, "cluster3", []string{"http://127.0.0.1:2379"}, "")
	settle(t, dir)
	p := newPoller(t, dir)
	found, errs, _ := p.poll()
	if len(found) != 2 || len(errs) != 0 || found["cluster2"] == nil || found["cluster2"].tls == nil {
		t.Fatalf("first poll: %v, errors %v", found, errs)
	}
	prev := found

	tests := []struct {
		name   string
		change func(t *testing.T)
		// reads are the base names of the files the next poll must read.
		reads []string
		// same: cluster2 keeps its loadedConfig.
		same bool
	}{
		{name: "unchanged", change: func(*testing.T) {}, same: true},
		{
			name: "config file changed",
			change: func(t *testing.T) {
				writeConfig(t, dir, "cluster2", []string{"https://127.0.0.2:2379"}, tlsLines)
			},
			reads: []string{"cluster2"},
		},
		{
			name:   "settled after the racy window",
			change: func(t *testing.T) { settle(t, dir) },
			// Its date changed: read once more, same content.
			reads: []string{"cluster2"},
			same:  true,
		},
		{name: "unchanged again", change: func(*testing.T) {}, same: true},
		{
			name: "rewritten with the same content",
			change: func(t *testing.T) {
				writeConfig(t, dir, "cluster2", []string{"https://127.0.0.2:2379"}, tlsLines)
				settle(t, dir)
			},
			reads: []string{"cluster2"},
			same:  true,
		},
		{
			name: "certificate rotated",
			change: func(t *testing.T) {
				writeClientFiles(t, dir, "cluster2", ca, ca)
				settle(t, dir)
			},
			reads: []string{"ca.crt", "client.crt", "client.key"},
		},
		{
			name: "certificate removed",
			change: func(t *testing.T) {
				os.Remove(filepath.Join(dir, "certs-cluster2", "client.key"))
			},
			reads: []string{"client.key"},
		},
		{name: "still removed: the error is remembered", change: func(*testing.T) {}},
		{
			name: "certificate back",
			change: func(t *testing.T) {
				writeClientFiles(t, dir, "cluster2", ca, ca)
				settle(t, dir)
			},
			reads: []string{"ca.crt", "client.crt", "client.key"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.t = t
			tt.change(t)
			found, errs, reads := p.poll()
			if !slices.Equal(slices.Sorted(slices.Values(reads)), slices.Sorted(slices.Values(tt.reads))) {
				t.Errorf("read %v, want %v", reads, tt.reads)
			}
			if tt.name == "certificate removed" || tt.name == "still removed: the error is remembered" {
				if err := errs["cluster2"]; err == nil || !strings.Contains(err.Error(), "client.key") {
					t.Fatalf("error %v, want one naming the missing key", err)
				}
				return
			}
			if len(errs) != 0 || found["cluster2"] == nil {
				t.Fatalf("found %v, errors %v", found, errs)
			}
			if got := found["cluster2"] == prev["cluster2"]; got != tt.same {
				t.Errorf("cluster2 kept its loaded config: %v, want %v", got, tt.same)
			}
			if found["cluster3"] != prev["cluster3"] {
				t.Error("untouched cluster3 was reloaded")
			}
			prev = found
		})
	}
	t.Run("file removed is forgotten", func(t *testing.T) {
		p.t = t
		os.Remove(filepath.Join(dir, "cluster3"))
		found, _, reads := p.poll()
		if _, ok := found["cluster3"]; ok || len(reads) != 0 {
			t.Fatalf("found %v, read %v", found, reads)
		}
		for path := range p.m.files.files {
			if filepath.Base(path) == "cluster3" {
				t.Fatalf("%s still cached", path)
			}
		}
		if len(p.m.files.configs) != 1 {
			t.Fatalf("%d configs cached, want 1", len(p.m.files.configs))
		}
	})
}

// TestPollRacyFile: a file read within the racy window is read again at
// the next poll even if its stamp is the same, so that a rewrite in the
// same timestamp tick (same size, same inode, same mtime) is not missed.
func TestPollRacyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster2")
	write := func(content string, mtime time.Time) {
		// In place, keeping the inode, as an editor without rename would.
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	tick := time.Now()
	write("endpoints: [http://127.0.0.1:2379]\n", tick)
	p := newPoller(t, dir)
	found, _, _ := p.poll()
	if got := found["cluster2"].etcd.Endpoints; got[0] != "http://127.0.0.1:2379" {
		t.Fatalf("endpoints %v", got)
	}
	write("endpoints: [http://127.0.0.9:2379]\n", tick) // same size, same mtime
	found, _, reads := p.poll()
	if got := found["cluster2"].etcd.Endpoints; got[0] != "http://127.0.0.9:2379" || len(reads) != 1 {
		t.Fatalf("endpoints %v after %v reads: a racy rewrite was missed", got, reads)
	}
	settle(t, dir)
	p.poll()
	if _, _, reads := p.poll(); len(reads) != 0 {
		t.Fatalf("read %v once settled", reads)
	}
}

// TestPollSymlinkSwap: with a mounted Secret's layout (every name a link
// into ..data, ..data a link to a timestamped directory), the atomic swap
// of ..data is seen through the links even though no link in the
// directory changed, for the config file and the certificates it names.
func TestPollSymlinkSwap(t *testing.T) {
	ca, err := pki.NewCA("meshbed-test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kdir := t.TempDir()
	version := func(ts, endpoint string) {
		d := filepath.Join(kdir, ts)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		lines := writeClientFiles(t, d, "cluster2", ca, ca)
		writeConfig(t, d, "cluster2", []string{endpoint}, lines)
		settle(t, d)
	}
	version("..2026_01", "https://127.0.0.1:2379")
	mustSymlink(t, "..2026_01", filepath.Join(kdir, "..data"))
	mustSymlink(t, filepath.Join("..data", "cluster2"), filepath.Join(kdir, "cluster2"))
	mustSymlink(t, filepath.Join("..data", "certs-cluster2"), filepath.Join(kdir, "certs-cluster2"))
	p := newPoller(t, kdir)
	found, errs, _ := p.poll()
	if len(errs) != 0 || found["cluster2"] == nil || found["cluster2"].tls == nil {
		t.Fatalf("found %v, errors %v", found, errs)
	}
	first := found["cluster2"]
	if _, _, reads := p.poll(); len(reads) != 0 {
		t.Fatalf("read %v before the swap", reads)
	}

	swap := func(ts string) {
		tmp := filepath.Join(kdir, "..data_tmp")
		mustSymlink(t, ts, tmp)
		if err := os.Rename(tmp, filepath.Join(kdir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	// Same endpoint, rotated certificates.
	version("..2026_02", "https://127.0.0.1:2379")
	swap("..2026_02")
	found, _, reads := p.poll()
	if len(reads) != 4 {
		t.Fatalf("read %v after the swap, want the config and its three files", reads)
	}
	if found["cluster2"] == first || found["cluster2"].fingerprint == first.fingerprint {
		t.Fatal("rotated certificates behind a ..data swap not seen")
	}
	if _, _, reads := p.poll(); len(reads) != 0 {
		t.Fatalf("read %v after the swap settled", reads)
	}
}
