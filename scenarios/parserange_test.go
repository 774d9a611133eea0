package scenarios

import (
	"strings"
	"testing"
	"time"
)

func TestParseRange(t *testing.T) {
	if r, err := ParseRange("--hold", ""); err != nil || r != (Range{}) {
		t.Errorf("empty: %v, %v; want the zero Range (the default)", r, err)
	}
	if r, err := ParseRange("--hold", "1s..500ms"); err != nil || r != (Range{time.Second, 500 * time.Millisecond}) {
		t.Errorf("1s..500ms: %v, %v", r, err)
	}
	for _, s := range []string{"1s", "x..1s", "1s..y"} {
		if _, err := ParseRange("--interval", s); err == nil || !strings.HasPrefix(err.Error(), "--interval") {
			t.Errorf("%q: %v, want an error naming --interval", s, err)
		}
	}
}
