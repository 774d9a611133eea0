// Package kind is meshbed on real clusters (Kind locally and in CI, any
// cluster later): the Kind cluster configs (cluster1.yaml, cluster2.yaml),
// the image (image/Dockerfile) and the manifests that `meshbed install`
// renders and applies. The manifests are plain YAML files in manifests/,
// filled from Values with text/template; Render is the only way to produce
// them, so the CLI, the tests and a reader of the files see the same thing.
//
// The names and paths here are the contract between the manifests and the
// `meshbed clustermesh` commands, which fill the Secrets the pods mount:
//
//	Secret                  filled by  mounted by   holds
//	meshbed-apiserver-tls   enable     apiserver    ca.crt, server.*, admin.* (user admin-<cluster>)
//	meshbed-agent-tls       enable     agents       ca.crt, local-agent.* (user local-<cluster>)
//	meshbed-kvstoremesh-tls enable     kvstoremesh  ca.crt, remote.* (reader of other clusters),
//	                                                kvstoremesh.* (user kvstoremesh-<cluster>)
//	meshbed-kvstoremesh     connect    kvstoremesh  one EtcdConfig per remote cluster (its node port)
//	meshbed-clustermesh     connect    agents       one EtcdConfig per remote cluster (local kvstoremesh)
package kind

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"text/template"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/meshbed/meshbed/mesh/agent/cni"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// Object names in the cluster.
const (
	Namespace     = "meshbed-system"
	AgentName     = "meshbed-agent"
	APIServerName = "meshbed-apiserver"
	// KVStoreMeshName is kvstoremesh's Deployment: a process of its own
	// beside the mesh-apiserver (as Cilium runs it in a container of its
	// own), writing into the apiserver's etcd through its node port.
	KVStoreMeshName = "meshbed-kvstoremesh"
	ConfigMapName   = "meshbed-config"

	SecretAPIServerTLS   = "meshbed-apiserver-tls"
	SecretAgentTLS       = "meshbed-agent-tls"
	SecretKVStoreMeshTLS = "meshbed-kvstoremesh-tls"
	SecretKVStoreMesh    = "meshbed-kvstoremesh"
	SecretClusterMesh    = "meshbed-clustermesh"

	// AgentStoppedLabel on a node keeps the agent off it: the DaemonSet's
	// node affinity requires the label's absence, so labelling a node
	// deletes its agent pod and removing the label brings it back. The
	// Kind target stops one node's agent this way.
	AgentStoppedLabel = "meshbed.io/agent-stopped"
)

// Keys of the ConfigMap.
const (
	KeyClusterName          = "cluster-name"
	KeyClusterID            = "cluster-id"
	KeyMaxConnectedClusters = "max-connected-clusters"
)

// Paths inside the pods (and, for RunDir and CNISocket, on the node).
const (
	RunDir              = "/var/run/meshbed"
	CNISocket           = cni.DefaultSocket
	AgentClusterMeshDir = "/var/lib/meshbed/clustermesh"
	AgentTLSDir         = "/var/lib/meshbed/agent-tls"
	APIServerTLSDir     = "/var/lib/meshbed/apiserver-tls"
	KVStoreMeshDir      = "/var/lib/meshbed/kvstoremesh"
	KVStoreMeshTLSDir   = "/var/lib/meshbed/kvstoremesh-tls"
)

// Pair names in the Secrets besides the apiserver's server and admin pairs
// (pki.Dir layout: <name>.crt, <name>.key).
const (
	// AgentPair is the agents' client pair for the local mesh-apiserver,
	// user pki.LocalUser(<this cluster>).
	AgentPair = pki.LocalAgentPair
	// RemotePair is the client pair with which this cluster's kvstoremesh
	// reads the other clusters, user pki.RemoteUser(<this cluster>).
	RemotePair = "remote"
)

// Ports of the mesh-apiserver.
const (
	// APIServerPort is the Service port agents dial (ClusterIP).
	APIServerPort = 2379
	// APIServerNodePort is where other clusters dial, on any node.
	APIServerNodePort = 32379
	// APIServerListenPort is the port the mesh-apiserver binds on its
	// node's host network.
	APIServerListenPort = 2391
)

// Ports of the Prometheus metrics (--prometheus-serve-addr), announced to
// scrapers by the pods' prometheus.io/* annotations.
const (
	AgentMetricsPort       = metrics.AgentPort
	APIServerMetricsPort   = metrics.APIServerPort
	KVStoreMeshMetricsPort = metrics.KVStoreMeshPort
)

// TLSHashAnnotation on the pod templates of the mesh-apiserver and
// kvstoremesh carries a hash of its TLS Secret, so that new certificates
// roll the Deployment.
const TLSHashAnnotation = "meshbed.io/tls-hash"

// DefaultImage is the image `meshbed install` deploys unless told
// otherwise: what kind/README.md builds and loads into Kind.
const DefaultImage = "meshbed/meshbed:dev"

// Values fill the manifests.
type Values struct {
	ClusterName string
	ClusterID   uint32
	// MaxConnectedClusters is 255 or 511; zero means 255.
	MaxConnectedClusters uint32
	// Image holds meshbed-agent, meshbed-apiserver and meshbed-cni; empty
	// means DefaultImage.
	Image string
	// ImagePullPolicy is Always, IfNotPresent or Never; empty means
	// IfNotPresent (an image loaded with `kind load` is never pulled).
	ImagePullPolicy string
	// LogLevel of both components; empty means info.
	LogLevel string
	// Encryption of pod traffic between nodes: "none" (empty) or
	// "wireguard" (the agent's --encryption).
	Encryption string
	// EncryptionStrict refuses traffic to nodes without a WireGuard key
	// (the agent's --encryption-strict).
	EncryptionStrict bool
}

// imageRef is a permissive image reference: [registry[:port]/]path[:tag][@digest].
// It keeps quotes, spaces and YAML syntax out of the manifests.
var imageRef = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$`)

// withDefaults validates v and fills its defaults; every error names the
// field.
func (v Values) withDefaults() (Values, error) {
	var errs []error
	if v.MaxConnectedClusters == 0 {
		v.MaxConnectedClusters = wire.MaxConnectedClusters255
	}
	if v.Image == "" {
		v.Image = DefaultImage
	}
	if v.ImagePullPolicy == "" {
		v.ImagePullPolicy = "IfNotPresent"
	}
	if v.LogLevel == "" {
		v.LogLevel = "info"
	}
	if v.Encryption == "" {
		v.Encryption = "none"
	}
	switch {
	case v.Encryption != "none" && v.Encryption != "wireguard":
		errs = append(errs, fmt.Errorf("encryption %q: want none or wireguard", v.Encryption))
	case v.EncryptionStrict && v.Encryption != "wireguard":
		errs = append(errs, errors.New("strict encryption needs encryption wireguard"))
	}
	if err := wire.ValidateClusterName(v.ClusterName); err != nil {
		errs = append(errs, fmt.Errorf("cluster name: %w", err))
	}
	if err := wire.ValidateMaxConnectedClusters(v.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("max connected clusters: %w", err))
	} else if err := wire.ValidateClusterID(v.ClusterID, v.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("cluster ID: %w", err))
	}
	if !imageRef.MatchString(v.Image) {
		errs = append(errs, fmt.Errorf("image %q: not an image reference", v.Image))
	}
	switch v.ImagePullPolicy {
	case "Always", "IfNotPresent", "Never":
	default:
		errs = append(errs, fmt.Errorf("image pull policy %q: want Always, IfNotPresent or Never", v.ImagePullPolicy))
	}
	switch v.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log level %q: want debug, info, warn or error", v.LogLevel))
	}
	return v, errors.Join(errs...)
}

//go:embed manifests/*.yaml
var manifests embed.FS

// files are the manifests in apply order: namespace and CRDs before what
// lives in them or uses them, configuration before the workloads that
// mount it.
var files = []string{
	"namespace.yaml",
	"crd-meshidentity.yaml",
	"crd-ciliumnetworkpolicy.yaml",
	"rbac.yaml",
	"config.yaml",
	"agent.yaml",
	"apiserver.yaml",
}

var templates = template.Must(template.New("").Option("missingkey=error").Funcs(template.FuncMap{
	// quote makes a YAML double-quoted scalar; Go's escapes are a subset
	// of YAML's.
	"quote": func(v any) string { return strconv.Quote(fmt.Sprint(v)) },
	"list":  func(s ...string) []string { return s },
}).ParseFS(manifests, "manifests/*.yaml"))

// data is what the templates see: the values and the package's constants.
type data struct {
	Values
	Namespace, AgentName, APIServerName, ConfigMapName       string
	KVStoreMeshName                                          string
	SecretAPIServerTLS, SecretAgentTLS, SecretKVStoreMeshTLS string
	SecretKVStoreMesh, SecretClusterMesh                     string
	Secrets                                                  []string
	RunDir, CNISocket, AgentClusterMeshDir, AgentTLSDir      string
	APIServerTLSDir, KVStoreMeshDir, KVStoreMeshTLSDir       string
	APIServerPort, APIServerNodePort, APIServerListenPort    int
	AgentMetricsPort, APIServerMetricsPort                   int
	KVStoreMeshMetricsPort                                   int
	AgentStoppedLabel                                        string
}

// Render validates v and returns the manifests as one multi-document YAML
// stream, in apply order.
func Render(v Values) ([]byte, error) {
	v, err := v.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("render manifests: %w", err)
	}
	d := data{
		Values: v, Namespace: Namespace, AgentName: AgentName, APIServerName: APIServerName, KVStoreMeshName: KVStoreMeshName,
		ConfigMapName: ConfigMapName, SecretAPIServerTLS: SecretAPIServerTLS, SecretAgentTLS: SecretAgentTLS,
		SecretKVStoreMeshTLS: SecretKVStoreMeshTLS, SecretKVStoreMesh: SecretKVStoreMesh, SecretClusterMesh: SecretClusterMesh,
		Secrets: []string{SecretAPIServerTLS, SecretAgentTLS, SecretKVStoreMeshTLS, SecretKVStoreMesh, SecretClusterMesh},
		RunDir:  RunDir, CNISocket: CNISocket, AgentClusterMeshDir: AgentClusterMeshDir, AgentTLSDir: AgentTLSDir,
		APIServerTLSDir: APIServerTLSDir, KVStoreMeshDir: KVStoreMeshDir, KVStoreMeshTLSDir: KVStoreMeshTLSDir,
		APIServerPort: APIServerPort, APIServerNodePort: APIServerNodePort, APIServerListenPort: APIServerListenPort,
		AgentMetricsPort: AgentMetricsPort, APIServerMetricsPort: APIServerMetricsPort, KVStoreMeshMetricsPort: KVStoreMeshMetricsPort,
		AgentStoppedLabel: AgentStoppedLabel,
	}
	var out bytes.Buffer
	for i, f := range files {
		if i > 0 {
			out.WriteString("---\n")
		}
		fmt.Fprintf(&out, "# Source: kind/manifests/%s\n", f)
		if err := templates.ExecuteTemplate(&out, f, d); err != nil {
			return nil, fmt.Errorf("render %s: %w", f, err)
		}
	}
	return out.Bytes(), nil
}

// Objects renders the manifests and decodes them, in apply order.
func Objects(v Values) ([]*unstructured.Unstructured, error) {
	y, err := Render(v)
	if err != nil {
		return nil, err
	}
	return Decode(y)
}

// Decode splits a multi-document YAML stream into objects, skipping empty
// documents. Every object must have an apiVersion, a kind and a name.
func Decode(y []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(y), 4096)
	var objs []*unstructured.Unstructured
	for i := 0; ; i++ {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, fmt.Errorf("decode manifest document %d: %w", i, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("decode manifest document %d: apiVersion, kind and metadata.name are required", i)
		}
		objs = append(objs, u)
	}
}
