#!/usr/bin/env bash
# The house rules a command can check, run by CI before the tests:
#   - no tracked file over 1 MB unless it is generated code (bpf2go output);
#   - gofmt on every Go file;
#   - go.mod and go.sum tidy;
#   - go vet and staticcheck (pinned).
# The import boundaries are a Go test (internal/boundary); the generated code
# is checked by `make generate-check`.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
big=$(git ls-files -z | xargs -0 -r stat -c '%s %n' | awk '$1 > 1048576 {print $2}' | grep -vE '_bpfe[lb]\.(o|go)$' || true)
if [ -n "$big" ]; then
	echo "hack/check.sh: tracked files over 1 MB that are not generated code:" >&2
	echo "$big" >&2
	fail=1
fi

unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "hack/check.sh: gofmt -l lists:" >&2
	echo "$unformatted" >&2
	fail=1
fi

if ! go mod tidy -diff >/dev/null; then
	echo "hack/check.sh: go.mod/go.sum not tidy (go mod tidy -diff):" >&2
	go mod tidy -diff >&2 || true
	fail=1
fi

go vet ./... || fail=1
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./... || fail=1

exit $fail
