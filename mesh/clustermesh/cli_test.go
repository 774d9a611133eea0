package clustermesh

import (
	"strings"
	"testing"

	"github.com/meshbed/meshbed/internal/cmdutil"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string // "" valid
	}{
		{EnableOptions{Context: "a"}.Validate(), ""},
		{EnableOptions{}.Validate(), "--context is required"},
		{ConnectOptions{Context: "a", Destination: "b"}.Validate(), ""},
		{ConnectOptions{}.Validate(), "--context is required\n--destination-context is required"},
		{ConnectOptions{Context: "a", Destination: "a"}.Validate(), `--destination-context "a": same as --context`},
	} {
		switch {
		case tc.want == "" && tc.err != nil:
			t.Errorf("refused: %v", tc.err)
		case tc.want != "" && (tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) || cmdutil.ExitCode(tc.err, 0) != 2):
			t.Errorf("%v (exit %d), want %q exit 2", tc.err, cmdutil.ExitCode(tc.err, 0), tc.want)
		}
	}
}
