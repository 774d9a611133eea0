package flow

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/internal/cmdutil"
)

func TestOptionsRequest(t *testing.T) {
	req, err := Options{Node: "n1", Verdict: "DROPPED", Last: 5, LastSet: true, Follow: true, Output: OutputCompact}.Request()
	if err != nil || !req.Follow {
		t.Fatalf("%+v, %v", req, err)
	}
	// The server's rule, named as the flag.
	if _, err := (Options{ToService: "x", Output: OutputCompact}).Request(); err == nil || !strings.HasPrefix(err.Error(), "--to-service") {
		t.Errorf("bad --to-service: %v", err)
	}
	if _, err := (Options{Output: "yaml"}).Request(); err == nil {
		t.Error("-o yaml accepted")
	}
}

func TestStreamError(t *testing.T) {
	dial := &net.OpError{Op: "dial", Err: errors.New("refused")}
	for _, tc := range []struct {
		err    error
		follow bool
		code   int // 0: nil
		want   string
	}{
		{nil, false, 0, ""},
		{context.Canceled, true, 0, ""},
		{nil, true, 1, "ended"},
		{io.ErrUnexpectedEOF, false, 1, "ended"},
		{&RequestError{Msg: "--verdict: bad"}, false, 2, "--verdict: bad"},
		{dial, false, 2, "unreachable"},
		{errors.New("other"), false, 1, "other"},
	} {
		err := StreamError(tc.err, Request{Follow: tc.follow}, "unreachable", "ended")
		if tc.code == 0 {
			if err != nil {
				t.Errorf("%v: %v, want nil", tc.err, err)
			}
			continue
		}
		if cmdutil.ExitCode(err, 0) != tc.code || err.Error() != tc.want {
			t.Errorf("%v: %v (exit %d), want %q exit %d", tc.err, err, cmdutil.ExitCode(err, 0), tc.want, tc.code)
		}
	}
}
