package remote

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshbed/meshbed/mesh/pki"
)

// mtlsDir writes a config directory of n remote clusters, each with its
// own CA, client certificate and key (the layout of TestMutualTLS), and
// dates every file an hour back, as a mounted Secret is between updates.
func mtlsDir(tb testing.TB, n int) string {
	tb.Helper()
	ca, err := pki.NewCA("meshbed-bench-ca", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	for i := range n {
		name := fmt.Sprintf("cluster%d", i+2)
		writeConfig(tb, dir, name, []string{"https://127.0.0.1:2379"}, writeClientFiles(tb, dir, name, ca, ca))
	}
	settle(tb, dir)
	return dir
}

// settledAt is the date settle gives files: an hour back, the same for
// every call so that settling an unchanged file does not change its stamp.
var settledAt = time.Now().Add(-time.Hour).Truncate(time.Second)

// settle dates every file under dir back to settledAt, as the files of a
// mounted Secret are between updates (and outside the racy window).
func settle(tb testing.TB, dir string) {
	tb.Helper()
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		return os.Chtimes(p, settledAt, settledAt)
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkPollUnchanged measures one poll of a config directory of 50
// remote clusters with mTLS (a config file, CA, certificate and key each)
// in which nothing changed: what every agent and kvstoremesh pays every
// PollInterval. reads/op counts the files read.
func BenchmarkPollUnchanged(b *testing.B) {
	const clusters = 50
	dir := mtlsDir(b, clusters)
	m, err := New(fastConfig(b, dir))
	if err != nil {
		b.Fatal(err)
	}
	var reads atomic.Int64
	m.files.readFile = func(p string) ([]byte, error) {
		reads.Add(1)
		return os.ReadFile(p)
	}
	found, errs, err := m.readConfigs()
	if err != nil || len(found) != clusters || len(errs) != 0 {
		b.Fatalf("first poll: %d found, errors %v, %v", len(found), errs, err)
	}
	reads.Store(0)
	for b.Loop() {
		if _, _, err := m.readConfigs(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(reads.Load())/float64(b.N), "reads/op")
}
