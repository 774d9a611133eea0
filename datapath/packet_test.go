package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/meshbed/meshbed/datapath/state"
)

// Hand-built packets for BPF_PROG_TEST_RUN: Ethernet + IPv4 + TCP/UDP with
// correct checksums, and a parser that checks the checksums of what the
// program wrote back.

const (
	tcpSYN = 0x02
	tcpACK = 0x10
	tcpFIN = 0x01
)

type testPacket struct {
	src, dst netip.AddrPort
	proto    state.Protocol
	tcpFlags uint8
	payload  []byte
	srcMAC   [6]byte
	dstMAC   [6]byte
}

func csumFold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func (p testPacket) bytes() []byte {
	var l4 []byte
	switch p.proto {
	case state.TCP:
		l4 = make([]byte, 20+len(p.payload))
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		binary.BigEndian.PutUint32(l4[4:], 1000)
		l4[12] = 5 << 4
		l4[13] = p.tcpFlags
		binary.BigEndian.PutUint16(l4[14:], 65535)
		copy(l4[20:], p.payload)
	case state.UDP:
		l4 = make([]byte, 8+len(p.payload))
		binary.BigEndian.PutUint16(l4[0:], p.src.Port())
		binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		copy(l4[8:], p.payload)
	default:
		l4 = append([]byte{8, 0, 0, 0, 0, 1, 0, 1}, p.payload...) // ICMP echo
	}

	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	ip[8] = 64
	ip[9] = uint8(p.proto)
	if p.proto == state.ProtoAny {
		ip[9] = 1
	}
	s, d := p.src.Addr().As4(), p.dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))

	switch p.proto {
	case state.TCP, state.UDP:
		off := 16
		if p.proto == state.UDP {
			off = 6
		}
		binary.BigEndian.PutUint16(l4[off:], csumFold(csumAdd(pseudoSum(ip, len(l4)), l4)))
	default:
		binary.BigEndian.PutUint16(l4[2:], csumFold(csumAdd(0, l4)))
	}

	eth := make([]byte, 14)
	copy(eth[0:], p.dstMAC[:])
	copy(eth[6:], p.srcMAC[:])
	binary.BigEndian.PutUint16(eth[12:], 0x0800)
	return append(append(eth, ip...), l4...)
}

func pseudoSum(ip []byte, l4len int) uint32 {
	sum := csumAdd(0, ip[12:20])
	sum += uint32(ip[9])
	sum += uint32(l4len)
	return sum
}

// parsedPacket is what a test checks after the program ran.
type parsedPacket struct {
	src, dst netip.AddrPort
	proto    uint8
	srcMAC   [6]byte
}

// parseTestPacket decodes b and verifies the IPv4 and TCP/UDP checksums.
func parseTestPacket(b []byte) (parsedPacket, error) {
	var p parsedPacket
	if len(b) < 34 {
		return p, fmt.Errorf("packet of %d bytes", len(b))
	}
	copy(p.srcMAC[:], b[6:12])
	ip := b[14:34]
	if csumFold(csumAdd(0, ip)) != 0 {
		return p, fmt.Errorf("bad IPv4 header checksum")
	}
	p.proto = ip[9]
	s := netip.AddrFrom4([4]byte(ip[12:16]))
	d := netip.AddrFrom4([4]byte(ip[16:20]))
	totLen := int(binary.BigEndian.Uint16(ip[2:]))
	if 14+totLen > len(b) {
		return p, fmt.Errorf("truncated packet")
	}
	l4 := b[34 : 14+totLen]
	switch p.proto {
	case 6, 17:
		if csumFold(csumAdd(pseudoSum(ip, len(l4)), l4)) != 0 {
			return p, fmt.Errorf("bad L4 checksum (proto %d)", p.proto)
		}
		p.src = netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4[0:]))
		p.dst = netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:]))
	default:
		p.src = netip.AddrPortFrom(s, 0)
		p.dst = netip.AddrPortFrom(d, 0)
	}
	return p, nil
}
