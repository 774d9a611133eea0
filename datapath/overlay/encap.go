package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// Attributes of a LWTUNNEL_ENCAP_IP route encap (linux/lwtunnel.h).
const (
	lwtunnelIPID  = 1 // be64 tunnel ID, the VNI for VXLAN
	lwtunnelIPDst = 2 // IPv4 destination of the outer header
	lwtunnelIPTTL = 4 // u8
)

// IPEncap is the route encap "encap ip id ID dst DST ttl TTL": it attaches
// tunnel metadata to every packet the route sends into a collect-metadata
// tunnel device. vishvananda/netlink has no type for it, so this implements
// its Encap interface.
type IPEncap struct {
	ID  uint64
	Dst netip.Addr
	TTL uint8
}

var _ netlink.Encap = (*IPEncap)(nil)

// Type is LWTUNNEL_ENCAP_IP.
func (e *IPEncap) Type() int { return nl.LWTUNNEL_ENCAP_IP }

// Encode serializes the attributes nested in RTA_ENCAP.
func (e *IPEncap) Encode() ([]byte, error) {
	if !e.Dst.Is4() {
		return nil, fmt.Errorf("encap destination %v is not IPv4", e.Dst)
	}
	id := make([]byte, 8)
	binary.BigEndian.PutUint64(id, e.ID)
	dst := e.Dst.As4()
	var b []byte
	b = append(b, nl.NewRtAttr(lwtunnelIPID, id).Serialize()...)
	b = append(b, nl.NewRtAttr(lwtunnelIPDst, dst[:]).Serialize()...)
	b = append(b, nl.NewRtAttr(lwtunnelIPTTL, []byte{e.TTL}).Serialize()...)
	return b, nil
}

// Decode parses the attributes nested in RTA_ENCAP, ignoring those it does
// not know (source, TOS, flags, options).
func (e *IPEncap) Decode(b []byte) error {
	*e = IPEncap{}
	for len(b) > 0 {
		if len(b) < 4 {
			return errors.New("truncated attribute header")
		}
		l, typ := int(nl.NativeEndian().Uint16(b)), nl.NativeEndian().Uint16(b[2:])&^(1<<15|1<<14)
		if l < 4 || l > len(b) {
			return fmt.Errorf("attribute length %d out of bounds (%d left)", l, len(b))
		}
		v := b[4:l]
		switch typ {
		case lwtunnelIPID:
			if len(v) != 8 {
				return fmt.Errorf("tunnel ID of %d bytes", len(v))
			}
			e.ID = binary.BigEndian.Uint64(v)
		case lwtunnelIPDst:
			if len(v) != 4 {
				return fmt.Errorf("destination of %d bytes", len(v))
			}
			e.Dst = netip.AddrFrom4([4]byte(v))
		case lwtunnelIPTTL:
			if len(v) != 1 {
				return fmt.Errorf("TTL of %d bytes", len(v))
			}
			e.TTL = v[0]
		}
		next := (l + 3) &^ 3
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
	}
	return nil
}

func (e *IPEncap) String() string {
	return fmt.Sprintf("ip id %d dst %s ttl %d", e.ID, e.Dst, e.TTL)
}

// Equal reports whether x is an IPEncap with the same fields.
func (e *IPEncap) Equal(x netlink.Encap) bool {
	o, ok := x.(*IPEncap)
	if !ok || e == nil || o == nil {
		return ok && e == nil && o == nil
	}
	return *e == *o
}
