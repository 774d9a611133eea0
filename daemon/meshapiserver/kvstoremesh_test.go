package meshapiserver

import (
	"strings"
	"testing"
)

func TestKVStoreMeshValidateNamesTheFlag(t *testing.T) {
	o := KVStoreMeshOptions{ClusterName: "Cluster_1", MaxConnected: 255, LocalEndpoint: "http://x", TLSDir: t.TempDir()}
	err := o.Validate()
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range []string{"--cluster-name", "--cluster-id", "--clustermesh-config", "--local-endpoint", "--tls-dir"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}
}
