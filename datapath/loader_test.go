package datapath

import (
	"errors"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
)

func TestNewLoadsAndCloses(t *testing.T) {
	testenv.Privileged(t)
	d, err := New(Options{ClusterID: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := d.Apply(&state.State{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: %v, want ErrClosed", err)
	}
}

func TestCheckKernel(t *testing.T) {
	testenv.Privileged(t)
	// This machine has everything; the check must say so, and an error it
	// would return names the feature.
	if err := checkKernel(); err != nil {
		t.Fatalf("checkKernel on a capable kernel: %v", err)
	}
	err := error(&FeatureError{Feature: "tcx", Err: errors.New("not supported")})
	if got := err.Error(); got != "kernel lacks tcx: not supported" {
		t.Fatalf("FeatureError = %q", got)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, opts := range []Options{{ClusterID: 0}, {ClusterID: 512}, {ClusterID: 1, Routing: 7}} {
		if d, err := New(opts); err == nil {
			d.Close()
			t.Errorf("New(%+v) succeeded", opts)
		}
	}
}
