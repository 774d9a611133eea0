package cmdutil

import (
	"errors"
	"fmt"
	"testing"
)

func TestExitCodes(t *testing.T) {
	if Invalid(nil) != nil || Failed(nil) != nil {
		t.Fatal("nil is not nil any more")
	}
	base := errors.New("boom")
	if got := ExitCode(Invalid(base), 0); got != 2 {
		t.Errorf("Invalid: exit %d, want 2", got)
	}
	if got := ExitCode(Failed(base), 0); got != 1 {
		t.Errorf("Failed: exit %d, want 1", got)
	}
	// A code already given is kept, also through wrapping.
	if got := ExitCode(Invalid(fmt.Errorf("step: %w", Failed(base))), 0); got != 1 {
		t.Errorf("Invalid(Failed): exit %d, want 1", got)
	}
	if got := ExitCode(base, 7); got != 7 {
		t.Errorf("plain error: exit %d, want the default 7", got)
	}
	if err := Invalidf("--x %q: bad", "y"); err.Error() != `--x "y": bad` || !errors.Is(Invalid(base), base) {
		t.Errorf("message or chain lost: %v", err)
	}
}
