package overlay_test

import (
	"net/netip"
	"testing"

	"github.com/meshbed/meshbed/datapath/overlay"
)

func TestIPEncapRoundTrip(t *testing.T) {
	for _, e := range []overlay.IPEncap{
		{ID: 0, Dst: netip.MustParseAddr("172.20.1.2"), TTL: 64},
		{ID: 1<<24 - 1, Dst: netip.MustParseAddr("10.0.0.1"), TTL: 1},
	} {
		b, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		var got overlay.IPEncap
		if err := got.Decode(b); err != nil {
			t.Fatal(err)
		}
		if !got.Equal(&e) {
			t.Errorf("round trip of %v gave %v", &e, &got)
		}
	}
	if _, err := (&overlay.IPEncap{Dst: netip.MustParseAddr("fd00::1")}).Encode(); err == nil {
		t.Error("IPv6 destination encoded")
	}
}

// FuzzIPEncapDecode: route dumps are parsed with Decode; no input may make
// it panic, and whatever it accepts must survive a re-encode.
func FuzzIPEncapDecode(f *testing.F) {
	seed, _ := (&overlay.IPEncap{ID: 7, Dst: netip.MustParseAddr("172.20.1.2"), TTL: 64}).Encode()
	f.Add(seed)
	f.Add([]byte{4, 0, 1, 0})
	f.Add([]byte{255, 255, 2, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var e overlay.IPEncap
		if err := e.Decode(b); err != nil || !e.Dst.IsValid() {
			return
		}
		again, err := e.Encode()
		if err != nil {
			t.Fatalf("re-encode %v: %v", &e, err)
		}
		var back overlay.IPEncap
		if err := back.Decode(again); err != nil || !back.Equal(&e) {
			t.Fatalf("re-decode of %v gave %v, %v", &e, &back, err)
		}
	})
}
