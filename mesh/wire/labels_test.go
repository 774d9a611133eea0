package wire

import (
	"strconv"
	"testing"
)

func itoa(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

func TestLabelsString(t *testing.T) {
	l := NewLabels(LabelSourceK8s, map[string]string{
		PodNamespaceLabel:  "default",
		"app":              "rebel-base",
		PolicyClusterLabel: "cluster1",
	})
	want := "k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;"
	if got := l.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	back, err := ParseLabels(want)
	if err != nil {
		t.Fatal(err)
	}
	if back.String() != want {
		t.Errorf("round trip: %q", back.String())
	}
	if v, ok := back.Get(PolicyClusterLabel); !ok || v != "cluster1" {
		t.Errorf("Get(cluster) = %q, %v", v, ok)
	}
}

func TestParseLabels(t *testing.T) {
	tests := []struct {
		in      string
		want    Labels
		wantErr bool
	}{
		{in: "", want: Labels{}},
		{in: "k8s:a=b;", want: Labels{{"k8s", "a", "b"}}},
		{in: "k8s:a=;", want: Labels{{"k8s", "a", ""}}},
		{in: "a=b:c;", want: Labels{{"", "a", "b:c"}}},
		{in: "k8s:x:y=z;", want: Labels{{"k8s", "x:y", "z"}}},
		{in: "k8s:a=b;k8s:c=d;", want: Labels{{"k8s", "a", "b"}, {"k8s", "c", "d"}}},
		{in: "k8s:a=b", wantErr: true},
		{in: "k8s:c=d;k8s:a=b;", wantErr: true},
		{in: "k8s:a=b;k8s:a=c;", wantErr: true},
		{in: "k8s:a;", wantErr: true},
		{in: ":a=b;", wantErr: true},
		{in: "k8s:=b;", wantErr: true},
		{in: ";", wantErr: true},
		{in: "k8s:a=b;;", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseLabels(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("label %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzParseLabels(f *testing.F) {
	f.Add("k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;")
	f.Add("a=b:c;")
	f.Add("k8s:x:y=z;")
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLabels(s)
		if err != nil {
			return
		}
		// Accepted input is exactly the canonical form.
		if got := l.String(); got != s {
			t.Fatalf("ParseLabels(%q).String() = %q", s, got)
		}
		if err := l.Validate(); err != nil {
			t.Fatalf("accepted %q but Validate: %v", s, err)
		}
	})
}
