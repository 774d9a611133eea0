package kube

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// FuzzDecode: manifests come from scenario files and `meshbed sim apply`;
// whatever they hold, Decode returns named objects of the supported kinds
// or an error, never a panic, and an accepted object written back as YAML
// decodes to one object of the same kind and name.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"apiVersion: v1\nkind: Service\nmetadata: {name: rebel-base}\nspec:\n  ports: [{port: 80, name: http}]\n",
		"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 2\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers: [{name: c, image: meshbed/echo, ports: [{containerPort: 80}]}]\n",
		"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: allow}\nspec: {endpointSelector: {}}\n---\n# comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n",
		"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec: {podSelector: {}}\n",
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
		"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: [x]\n",
		"apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
		"- a\n- b\n", "{", "apiVersion: v1\nkind: Service\nmetadata: {name: 1}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode(data)
		if err != nil {
			return
		}
		for _, obj := range objs {
			kind := obj.GetObjectKind().GroupVersionKind().Kind
			var name string
			if u, ok := obj.(*unstructured.Unstructured); ok {
				name = u.GetName()
			} else {
				m, err := metaOf(obj)
				if err != nil {
					t.Fatalf("decoded %T without metadata", obj)
				}
				name = m.GetName()
			}
			if name == "" {
				t.Fatalf("decoded a %s without a name", kind)
			}
			out, err := yaml.Marshal(obj)
			if err != nil {
				t.Fatalf("%s %s does not encode: %v", kind, name, err)
			}
			again, err := Decode(out)
			if err != nil || len(again) != 1 {
				t.Fatalf("%s %s written back does not decode to one object: %v\n%s", kind, name, err, out)
			}
		}
	})
}
