package apiserver

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// TestEtcdLogger: etcd's errors reach the apiserver's logger with their
// fields; its info and warnings do not.
func TestEtcdLogger(t *testing.T) {
	var buf bytes.Buffer
	lg := etcdLogger(slog.New(slog.NewTextHandler(&buf, nil))).With(zap.String("member", "m1"))
	lg.Info("chatter")
	lg.Warn("rejected connection")
	lg.Error("failed to apply", zap.Error(errors.New("no space")), zap.Int("index", 7))
	out := buf.String()
	if strings.Contains(out, "chatter") || strings.Contains(out, "rejected") {
		t.Errorf("info or warning logged:\n%s", out)
	}
	for _, want := range []string{`msg="Embedded etcd: failed to apply"`, `error="no space"`, "index=7", "member=m1", "etcdLevel=error"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
}
