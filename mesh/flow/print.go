package flow

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Output formats of a Printer.
const (
	OutputCompact = "compact"
	OutputJSON    = "json"
)

// Printer writes records for a person (compact, one line a flow, in the
// manner of hubble observe) or a program (json, one Record a line).
type Printer struct {
	W      io.Writer
	Output string
}

// ParseOutput checks an -o value.
func ParseOutput(s string) (string, error) {
	switch s {
	case "", OutputCompact:
		return OutputCompact, nil
	case OutputJSON:
		return OutputJSON, nil
	}
	return "", fmt.Errorf("-o %q: want %s or %s", s, OutputCompact, OutputJSON)
}

// Print writes one record.
func (p Printer) Print(rec Record) error {
	if p.Output == OutputJSON {
		return json.NewEncoder(p.W).Encode(rec)
	}
	_, err := io.WriteString(p.W, Compact(rec)+"\n")
	return err
}

// Compact is a record's one-line form.
func Compact(rec Record) string {
	const stamp = "Jan _2 15:04:05.000"
	if l := rec.Lost; l != nil {
		return fmt.Sprintf("%s [%s]: EVENTS LOST: %s %d", l.Time.Local().Format(stamp), l.Node, l.Source, l.Count)
	}
	f := rec.Flow
	var b strings.Builder
	fmt.Fprintf(&b, "%s [%s]: %s -> %s", f.Time.Local().Format(stamp), f.Node, side(f.Source), side(f.Destination))
	if s := f.Service; s != nil {
		fmt.Fprintf(&b, " service %s/%s (%s)", s.Namespace, s.Name, s.Frontend)
		if s.BackendCluster != "" {
			fmt.Fprintf(&b, " backend in %s", s.BackendCluster)
		}
	}
	if f.Tunnel != "" {
		fmt.Fprintf(&b, " %s %s", f.Tunnel, f.TunnelPeer)
	}
	fmt.Fprintf(&b, " %s %s", f.ObservationPoint, f.Verdict)
	if f.DropReason != "" {
		fmt.Fprintf(&b, " (%s)", f.DropReason)
	}
	fmt.Fprintf(&b, " %s", f.Protocol)
	if f.New {
		b.WriteString(" new")
	}
	return b.String()
}

func side(e Endpoint) string {
	var b strings.Builder
	b.WriteString(e.Name())
	fmt.Fprintf(&b, " (ID:%d", e.Identity)
	if e.Cluster != "" {
		fmt.Fprintf(&b, " %s", e.Cluster)
	}
	b.WriteString(")")
	if e.Pod != "" || e.Node != "" {
		fmt.Fprintf(&b, " %s", e.IP)
	}
	if e.Port != 0 {
		fmt.Fprintf(&b, ":%d", e.Port)
	}
	return b.String()
}
