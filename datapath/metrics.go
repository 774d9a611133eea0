package datapath

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the datapath's per-reason counters (Counters) at every
// scrape, as meshbed's own metrics (Cilium counts drops by reason and
// forwards by direction; these count both by the datapath's reasons):
//
//	meshbed_datapath_forwards_total{reason}        packets forwarded, load-balanced, sent to another cluster
//	meshbed_datapath_forward_bytes_total{reason}
//	meshbed_datapath_drops_total{reason}           packets dropped (policy, no backend, ...)
//	meshbed_datapath_drop_bytes_total{reason}
//	meshbed_datapath_events_lost_total             flow events the ring buffer had no room for
//
// A closed datapath exposes nothing.
func (d *Datapath) Collector(labels prometheus.Labels) prometheus.Collector {
	return &collector{d: d,
		fwd:      prometheus.NewDesc("meshbed_datapath_forwards_total", "Packets forwarded by the datapath, by reason", []string{"reason"}, labels),
		fwdBytes: prometheus.NewDesc("meshbed_datapath_forward_bytes_total", "Bytes forwarded by the datapath, by reason", []string{"reason"}, labels),
		drop:     prometheus.NewDesc("meshbed_datapath_drops_total", "Packets dropped by the datapath, by reason", []string{"reason"}, labels),
		dropB:    prometheus.NewDesc("meshbed_datapath_drop_bytes_total", "Bytes dropped by the datapath, by reason", []string{"reason"}, labels),
		lost:     prometheus.NewDesc("meshbed_datapath_events_lost_total", "Flow events lost because the ring buffer was full", nil, labels),
	}
}

type collector struct {
	d                                *Datapath
	fwd, fwdBytes, drop, dropB, lost *prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.fwd, c.fwdBytes, c.drop, c.dropB, c.lost} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.d.Counters()
	if err != nil {
		return
	}
	var lost float64
	for r, n := range counters {
		switch {
		case r == ReasonEventsLost:
			lost = float64(n.Packets)
		case r.IsDrop():
			ch <- prometheus.MustNewConstMetric(c.drop, prometheus.CounterValue, float64(n.Packets), r.String())
			ch <- prometheus.MustNewConstMetric(c.dropB, prometheus.CounterValue, float64(n.Bytes), r.String())
		default:
			ch <- prometheus.MustNewConstMetric(c.fwd, prometheus.CounterValue, float64(n.Packets), r.String())
			ch <- prometheus.MustNewConstMetric(c.fwdBytes, prometheus.CounterValue, float64(n.Bytes), r.String())
		}
	}
	ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, lost)
}
