package flow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"

	"github.com/meshbed/meshbed/internal/cmdutil"
)

// Options are the flags of `meshbed observe` and `meshbed sim observe`,
// Hubble's names where Hubble has the filter.
type Options struct {
	Cluster, Node, FromCluster, ToService, Verdict string
	// Last is --last, LastSet whether it was given.
	Last    int
	LastSet bool
	Follow  bool
	Output  string
}

// Request checks the flags with the same rules the server applies.
func (o Options) Request() (Request, error) {
	if _, err := ParseOutput(o.Output); err != nil {
		return Request{}, err
	}
	q := url.Values{}
	for k, v := range map[string]string{
		ParamCluster: o.Cluster, ParamNode: o.Node, ParamFromCluster: o.FromCluster,
		ParamToService: o.ToService, ParamVerdict: o.Verdict,
	} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if o.LastSet {
		q.Set(ParamLast, strconv.Itoa(o.Last))
	}
	if o.Follow {
		q.Set(ParamFollow, "true")
	}
	req, err := ParseRequest(q)
	if err != nil {
		return Request{}, fmt.Errorf("--%w", err)
	}
	return req, nil
}

// StreamError makes the error of a flow stream read for req one line with
// the command's exit code: unreachable is what to say when the socket does
// not answer (empty: the error as it is), ended when a followed stream is
// cut.
func StreamError(err error, req Request, unreachable, ended string) error {
	var reqErr *RequestError
	var opErr *net.OpError
	switch {
	case (err == nil && req.Follow) || errors.Is(err, io.ErrUnexpectedEOF):
		return cmdutil.Failed(errors.New(ended))
	case err == nil, errors.Is(err, context.Canceled):
		return nil
	case errors.As(err, &reqErr):
		return cmdutil.Invalid(err)
	case unreachable != "" && errors.As(err, &opErr) && opErr.Op == "dial":
		return cmdutil.Invalid(errors.New(unreachable))
	}
	return cmdutil.Failed(err)
}
