package event

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// ParseLogLine reads back an event from one line that Logger wrote through
// slog's text handler (key=value pairs, values quoted where they need it),
// as a component's container log holds it. ok is false for any other line;
// err is set for a decision-event line that does not decode (a truncated
// line, an unknown kind, a bad time), so that a reader can count what it
// could not use instead of dropping it silently.
func ParseLogLine(line string) (e Event, ok bool, err error) {
	if !strings.Contains(line, LogMessage) {
		return Event{}, false, nil
	}
	attrs, err := textAttrs(line)
	if err != nil {
		return Event{}, false, nil // not a slog text line
	}
	if attrs["msg"] != LogMessage {
		return Event{}, false, nil
	}
	if e.Kind, err = ParseKind(attrs["kind"]); err != nil {
		return Event{}, true, err
	}
	e.Cluster = attrs["cluster"]
	e.Node = attrs["node"]
	e.Component = attrs["component"]
	e.Remote = attrs["remote"]
	e.Service = attrs["service"]
	e.Policy = attrs["policy"]
	e.Message = attrs["detail"]
	if b, has := attrs["backends"]; has {
		if e.Backends, err = strconv.Atoi(b); err != nil {
			return Event{}, true, errors.New("bad backends " + strconv.Quote(b))
		}
	}
	at := attrs["at"]
	if at == "" {
		at = attrs["time"] // a line of an older component
	}
	if e.Time, err = time.Parse(time.RFC3339Nano, at); err != nil {
		return Event{}, true, errors.New("bad time " + strconv.Quote(at))
	}
	if e.Cluster == "" {
		return Event{}, true, errors.New("no cluster")
	}
	return e, true, nil
}

// textAttrs splits a slog text line into its attributes. A container
// runtime may prefix the line (a timestamp): everything before the first
// "time=" is ignored.
func textAttrs(line string) (map[string]string, error) {
	if i := strings.Index(line, "time="); i > 0 {
		line = line[i:]
	}
	attrs := map[string]string{}
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimLeft(line, " ") {
		eq := strings.IndexByte(line, '=')
		if eq <= 0 || strings.ContainsAny(line[:eq], " \"") {
			return nil, errors.New("not key=value")
		}
		key := line[:eq]
		line = line[eq+1:]
		var val string
		if strings.HasPrefix(line, `"`) {
			q, err := strconv.QuotedPrefix(line)
			if err != nil {
				return nil, err
			}
			if val, err = strconv.Unquote(q); err != nil {
				return nil, err
			}
			line = line[len(q):]
		} else {
			end := strings.IndexByte(line, ' ')
			if end < 0 {
				end = len(line)
			}
			val, line = line[:end], line[end:]
		}
		attrs[key] = val
	}
	return attrs, nil
}
