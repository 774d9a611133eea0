package apiserver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRemoteReaders(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"cluster2", "cluster3", ".hidden", "Not_A_Cluster"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("endpoints: [https://x:2379]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "..data"), 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := RemoteReaders(dir, []string{"cluster9", "cluster2"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "cluster2,cluster3,cluster9" {
		t.Fatalf("readers %v", got)
	}
	got, err = RemoteReaders(filepath.Join(dir, "missing"), nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("missing dir: %v, %v", got, err)
	}
}
