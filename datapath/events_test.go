package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
)

func TestDecodeEvent(t *testing.T) {
	fe := podFlowEvent{
		Saddr: be32(clientIP), Daddr: be32(remoteIP), Sport: be16(40000), Dport: be16(8080),
		OrigDaddr: be32(vip), OrigDport: be16(80), TunnelEndpoint: be32(node2),
		SrcIdentity: clientIdentity, DstIdentity: remoteIdentity, SrcCluster: 1, DstCluster: 2,
		BackendId: 7, RevNatId: 3, Proto: 6, Verdict: 1, Reason: uint8(ReasonRemoteCluster), Obs: 1, EndpointId: 4,
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &fe); err != nil {
		t.Fatal(err)
	}
	ev, err := decodeEvent(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Verdict: Forwarded, Reason: ReasonRemoteCluster, Point: FromContainer, Protocol: state.TCP,
		Source: ap(clientIP, 40000), Destination: ap(remoteIP, 8080), Frontend: ap(vip, 80),
		RevNATID: 3, BackendID: 7, SourceIdentity: clientIdentity, DestinationIdentity: remoteIdentity,
		SourceCluster: 1, DestinationCluster: 2, TunnelEndpoint: node2, EndpointID: 4,
	}
	if ev != want {
		t.Fatalf("decoded %+v\nwant %+v", ev, want)
	}
	s := ev.String()
	for _, part := range []string{"from-container", "FORWARDED", "remote-cluster", "10.0.1.2:40000 -> 10.0.2.5:8080", "identity 1000@1 -> 2000@2", "10.96.0.10:80", "tunnel 192.168.0.2"} {
		if !strings.Contains(s, part) {
			t.Errorf("String() = %q, lacks %q", s, part)
		}
	}
	if _, err := decodeEvent(buf.Bytes()[:10]); err == nil {
		t.Error("short record decoded")
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, flowEventSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw)
		if err != nil {
			return
		}
		_ = ev.String()
		if ev.Frontend.IsValid() && ev.Frontend.Addr() == (netip.Addr{}) {
			t.Fatal("valid frontend without address")
		}
	})
}
