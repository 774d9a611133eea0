package engine

import (
	"testing"
	"time"
)

func TestMaxOutage(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ok := func(ms int) result { return result{at: at(ms), took: time.Millisecond, cluster: "c1"} }
	fail := func(ms, took int) result {
		return result{at: at(ms), took: time.Duration(took) * time.Millisecond}
	}
	tests := []struct {
		name string
		rs   []result
		want time.Duration
	}{
		{"no requests", nil, 0},
		{"all fine", []result{ok(0), ok(20), ok(40)}, 0},
		{"one failure between successes", []result{ok(0), fail(20, 500), ok(40)}, 20 * time.Millisecond},
		{"longest run wins", []result{fail(0, 10), ok(10), fail(20, 500), fail(40, 500), ok(1000)}, 980 * time.Millisecond},
		{"failures overlap a success started earlier", []result{fail(0, 900), ok(100)}, 100 * time.Millisecond},
		{"trailing failures end with the last one", []result{ok(0), fail(100, 500), fail(200, 500)}, 600 * time.Millisecond},
		{"out of order input", []result{ok(1000), fail(40, 500), ok(0), fail(20, 500)}, 980 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := maxOutage(tt.rs); got != tt.want {
				t.Errorf("maxOutage = %v, want %v", got, tt.want)
			}
		})
	}
}
