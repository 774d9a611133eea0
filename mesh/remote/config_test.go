package remote

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"testing"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func TestParseEtcdConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    EtcdConfig
		wantErr bool
	}{
		{
			name: "cilium format",
			in: "endpoints:\n- https://clustermesh.cluster2:2379\ntrusted-ca-file: /etc/ca.crt\n" +
				"cert-file: /etc/tls.crt\nkey-file: /etc/tls.key\nusername: ignored\n",
			want: EtcdConfig{Endpoints: []string{"https://clustermesh.cluster2:2379"}, TrustedCAFile: "/etc/ca.crt", CertFile: "/etc/tls.crt", KeyFile: "/etc/tls.key"},
		},
		{name: "plain http", in: "endpoints: [http://127.0.0.1:2379]", want: EtcdConfig{Endpoints: []string{"http://127.0.0.1:2379"}}},
		{name: "https without client cert", in: "endpoints: [https://a:1]\ntrusted-ca-file: ca", want: EtcdConfig{Endpoints: []string{"https://a:1"}, TrustedCAFile: "ca"}},
		{name: "empty", in: "", wantErr: true},
		{name: "no endpoints", in: "endpoints: []", wantErr: true},
		{name: "not yaml", in: "endpoints: [", wantErr: true},
		{name: "wrong type", in: "endpoints: 5", wantErr: true},
		{name: "bad scheme", in: "endpoints: [unix:///tmp/x]", wantErr: true},
		{name: "no host", in: "endpoints: ['https://:2379']", wantErr: true},
		{name: "mixed schemes", in: "endpoints: [http://a:1, https://b:1]", wantErr: true},
		{name: "cert without key", in: "endpoints: [https://a:1]\ncert-file: c", wantErr: true},
		{name: "TLS files with http", in: "endpoints: [http://a:1]\ntrusted-ca-file: ca", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEtcdConfig([]byte(tt.in))
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("err = %v, want ErrInvalidConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Endpoints, tt.want.Endpoints) || got.TrustedCAFile != tt.want.TrustedCAFile ||
				got.CertFile != tt.want.CertFile || got.KeyFile != tt.want.KeyFile {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// FuzzParseEtcdConfig: user-written config files never panic the parser,
// and whatever it accepts is usable.
func FuzzParseEtcdConfig(f *testing.F) {
	f.Add([]byte("endpoints:\n- https://a:2379\ntrusted-ca-file: ca\ncert-file: c\nkey-file: k\n"))
	f.Add([]byte("endpoints: [http://127.0.0.1:2379]"))
	f.Add([]byte("{\"endpoints\":[\"https://[::1]:1\"]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseEtcdConfig(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		if len(c.Endpoints) == 0 {
			t.Fatal("accepted without endpoints")
		}
		for _, e := range c.Endpoints {
			u, err := url.Parse(e)
			if err != nil || u.Hostname() == "" || (u.Scheme == "https") != c.UsesTLS() {
				t.Fatalf("accepted endpoint %q", e)
			}
		}
		if (c.CertFile == "") != (c.KeyFile == "") {
			t.Fatal("accepted a certificate without key")
		}
	})
}
