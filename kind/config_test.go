package kind

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestDecodeClusterConfigErrors(t *testing.T) {
	for _, tt := range []struct{ doc, want string }{
		{"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {podSubnet: 10.10.0.0/16, serviceSubnet: 10.11.0.0/16}\n", "disableDefaultCNI must be true"},
		{"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true, podSubnet: 10.10.0.1/16, serviceSubnet: 10.10.128.0/17}\n", "host bits"},
		{"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true, podSubnet: 10.10.0.0/16, serviceSubnet: 10.10.128.0/17}\n", "overlaps"},
		{"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true, podSubnet: fd00::/48, serviceSubnet: 10.11.0.0/16}\n", "IPv4"},
		{"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true, podSubnet: 10.10.0.0/16, serviceSubnet: 10.11.0.0/16}\nnodes: [{role: worker}]\n", "no control-plane"},
		{"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true, podSubnet: 10.10.0.0/16, serviceSubnet: 10.11.0.0/16}\nnodes: [{role: boss}]\n", `role "boss"`},
		{"kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true, podSubnets: 10.10.0.0/16}\n", `unknown field "podSubnets"`},
		{"kind: Pod\napiVersion: v1\n", "want kind.x-k8s.io/v1alpha4 Cluster"},
	} {
		_, err := DecodeClusterConfig([]byte(tt.doc))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.doc, err, tt.want)
		}
	}
}

// FuzzDecodeClusterConfig: a Kind config given to meshbed decodes into a
// config that holds what the mesh needs, or an error, never a panic; an
// accepted config written back decodes to the same.
func FuzzDecodeClusterConfig(f *testing.F) {
	for _, file := range []string{"cluster1.yaml", "cluster2.yaml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true, podSubnet: 10.10.0.0/16, serviceSubnet: 10.10.0.0/17}\n"))
	f.Add([]byte("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes: [{role: control-plane, extraPortMappings: [{containerPort: 1, hostPort: 2}]}]\n"))
	f.Add([]byte("{"))
	f.Add([]byte("- a\n- b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeClusterConfig(data)
		if err != nil {
			return
		}
		pods := netip.MustParsePrefix(c.Networking.PodSubnet)
		svcs := netip.MustParsePrefix(c.Networking.ServiceSubnet)
		if !c.Networking.DisableDefaultCNI || pods.Overlaps(svcs) {
			t.Fatalf("accepted %+v", c.Networking)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeClusterConfig(out)
		if err != nil {
			t.Fatalf("written back, the config does not decode: %v\n%s", err, out)
		}
		if back.Networking != c.Networking || len(back.Nodes) != len(c.Nodes) || back.Name != c.Name {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, back)
		}
	})
}

// FuzzDecode: the manifest stream decoder never panics, and every object
// it returns has an apiVersion, a kind and a name.
func FuzzDecode(f *testing.F) {
	y, err := Render(Values{ClusterName: "cluster1", ClusterID: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(y)
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\n{}\n"))
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: [a]\n"))
	f.Add([]byte(`{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": 7}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode(data)
		if err != nil {
			return
		}
		for _, o := range objs {
			if o.GetAPIVersion() == "" || o.GetKind() == "" || o.GetName() == "" {
				t.Fatalf("decoded an object without apiVersion, kind or name: %v", o.Object)
			}
		}
	})
}
