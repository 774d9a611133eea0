package kvstore

import "time"

// Tick lets external tests drive a Watchdog they run themselves: a wake-up
// at now, with sched the scheduling latency of the period that ends.
func (w *Watchdog) Tick(now time.Time, sched time.Duration) { w.tick(now, sched) }

// TCPLost is the transport's verdict on one connection's TCP_INFO.
var TCPLost = tcpLost
