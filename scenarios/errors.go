package scenarios

import (
	"fmt"
	"strings"
)

// FieldError is one problem found in a scenario file. Load and Parse return
// every FieldError they find, joined with errors.Join; errors.As finds the
// first.
type FieldError struct {
	// File is the scenario file's path as given to Load or Parse.
	File string
	// Step counts steps from 1; it is 0 for problems outside the steps.
	Step     int
	StepName string
	// Field is the path of the offending field: from the document root
	// outside steps ("spec.topology.clusters[1].id"), from the step inside
	// one ("curl.from", "expect.within"). Empty when the problem is the
	// file or the step as a whole.
	Field string
	Msg   string
}

// Error formats e as "FILE: step N (NAME): FIELD: what is wrong", leaving out
// the parts that do not apply. It is always a single line.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	b.WriteString(": ")
	if e.Step > 0 {
		fmt.Fprintf(&b, "step %d", e.Step)
		if e.StepName != "" {
			fmt.Fprintf(&b, " (%s)", e.StepName)
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	// Messages quote user input and parser errors; one problem per line
	// keeps the list readable.
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(b.String())
}

// join builds a field path: join("spec", "topology") is "spec.topology".
func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// index builds a list element's path: index("steps", 2) is "steps[2]".
func index(parent string, i int) string {
	return fmt.Sprintf("%s[%d]", parent, i)
}

// suggest returns ` (did you mean "count"?)` for a near miss among known,
// or the list of known fields.
func suggest(unknown string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(unknown), strings.ToLower(k)); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (known: " + strings.Join(known, ", ") + ")"
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
