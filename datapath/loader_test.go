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
