package capture

import (
	"math"
	"strings"
	"time"

	"github.com/expr-lang/expr/ast"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// The functions a condition may call.

// Functions is what a condition may call, for the documentation and
// errors.
const Functions = "abs, min, max, floor, ceil, round, change, rate, avg_over, min_over, max_over, age, signal"

func (c *compiler) call(n ast.Node, name string, args []ast.Node) (value, error) {
	switch name {
	case "abs", "floor", "ceil", "round":
		fs, err := c.numArgs(n, name, args, 1, 1)
		if err != nil {
			return value{}, err
		}
		f := map[string]func(float64) float64{"abs": math.Abs, "floor": math.Floor, "ceil": math.Ceil, "round": math.Round}[name]
		x := fs[0]
		return numValue(func() (float64, bool) { v, ok := x(); return f(v), ok }), nil
	case "min", "max":
		fs, err := c.numArgs(n, name, args, 1, 16)
		if err != nil {
			return value{}, err
		}
		pick := math.Min
		if name == "max" {
			pick = math.Max
		}
		return numValue(func() (float64, bool) {
			best, ok := fs[0]()
			for _, f := range fs[1:] {
				v, okv := f()
				best, ok = pick(best, v), ok && okv
			}
			return best, ok
		}), nil
	case "signal":
		if len(args) != 1 {
			return value{}, c.errorf(n, "signal(\"NAME\") takes one string")
		}
		lit, ok := args[0].(*ast.StringNode)
		if !ok {
			return value{}, c.errorf(args[0], "signal(\"NAME\") takes a string literal")
		}
		return c.signal(n, lit.Value)
	case "age":
		if len(args) != 1 {
			return value{}, c.errorf(n, "age(SIGNAL) takes one signal")
		}
		s, err := c.windowSignal(args[0])
		if err != nil {
			return value{}, err
		}
		c.clock = true
		e := c.e
		return numValue(func() (float64, bool) {
			if !s.known {
				return 0, false
			}
			return float64(e.now-s.t) / 1e9, true
		}), nil
	case "change", "rate", "avg_over", "min_over", "max_over":
		return c.windowed(n, name, args)
	}
	return value{}, c.errorf(n, "unknown function %s (a condition may call %s)", name, Functions)
}

func (c *compiler) numArgs(n ast.Node, name string, args []ast.Node, lo, hi int) ([]numFn, error) {
	if len(args) < lo || len(args) > hi {
		return nil, c.errorf(n, "%s takes %d to %d numbers", name, lo, hi)
	}
	var out []numFn
	for _, a := range args {
		v, err := c.compile(a)
		if err != nil {
			return nil, err
		}
		f, err := c.asNum(a, v)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// windowSignal is the slot a windowed function or age reads: a signal
// name (or signal("NAME")), not an expression.
func (c *compiler) windowSignal(a ast.Node) (*slot, error) {
	name, ok := signalName(a)
	if call, isCall := a.(*ast.CallNode); isCall {
		if id, _ := call.Callee.(*ast.IdentifierNode); id != nil && id.Value == "signal" && len(call.Arguments) == 1 {
			if lit, isLit := call.Arguments[0].(*ast.StringNode); isLit {
				name, ok = lit.Value, true
			}
		}
	}
	if !ok {
		return nil, c.errorf(a, "want a signal name here")
	}
	s, err := c.e.conditionSlot(name)
	if err != nil {
		return nil, c.errorf(a, "%v", err)
	}
	if s.kind == wire.KindString {
		return nil, c.errorf(a, "%s is a string signal", name)
	}
	c.r.reads = append(c.r.reads, s)
	return s, nil
}

// windowed compiles change, rate, avg_over, min_over and max_over over a
// signal's history of the given length.
func (c *compiler) windowed(n ast.Node, name string, args []ast.Node) (value, error) {
	if len(args) != 2 {
		return value{}, c.errorf(n, "%s(SIGNAL, \"DURATION\") takes a signal and a duration such as \"1s\"", name)
	}
	s, err := c.windowSignal(args[0])
	if err != nil {
		return value{}, err
	}
	w, err := c.duration(args[1])
	if err != nil {
		return value{}, err
	}
	h := c.r.history(s, w)
	c.clock = true
	e := c.e
	switch name {
	case "change":
		return numValue(func() (float64, bool) { return h.change(e.now) }), nil
	case "rate":
		return numValue(func() (float64, bool) { return h.rate(e.now) }), nil
	case "avg_over":
		return numValue(func() (float64, bool) { return h.avg(e.now) }), nil
	case "min_over":
		if h.lo == nil {
			h.lo = &deque{}
		}
		return numValue(func() (float64, bool) { return h.extreme(e.now, false) }), nil
	}
	if h.hi == nil {
		h.hi = &deque{}
	}
	return numValue(func() (float64, bool) { return h.extreme(e.now, true) }), nil
}

// duration reads a window length: a string such as "1s", duration("1s"),
// or a number of seconds.
func (c *compiler) duration(a ast.Node) (int64, error) {
	var d time.Duration
	switch a := a.(type) {
	case *ast.StringNode:
		v, err := time.ParseDuration(a.Value)
		if err != nil {
			return 0, c.errorf(a, "%v", err)
		}
		d = v
	case *ast.BuiltinNode:
		if lit, ok := oneString(a.Arguments); a.Name == "duration" && ok {
			v, err := time.ParseDuration(lit)
			if err != nil {
				return 0, c.errorf(a, "%v", err)
			}
			d = v
		} else {
			return 0, c.errorf(a, "want a duration such as \"1s\"")
		}
	case *ast.IntegerNode:
		d = time.Duration(a.Value) * time.Second
	case *ast.FloatNode:
		d = time.Duration(a.Value * float64(time.Second))
	default:
		return 0, c.errorf(a, "want a duration such as \"1s\"")
	}
	if d <= 0 || d > MaxWindow {
		return 0, c.errorf(a, "window %v: want more than 0 and at most %v", d, MaxWindow)
	}
	return int64(d), nil
}

func oneString(args []ast.Node) (string, bool) {
	if len(args) != 1 {
		return "", false
	}
	s, ok := args[0].(*ast.StringNode)
	if !ok {
		return "", false
	}
	return s.Value, true
}

// closest is the known name nearest to name, for "did you mean".
func closest(name string, names []string) string {
	best, bestD := "", 4 // suggest only close ones
	lower := strings.ToLower(name)
	for _, n := range names {
		if d := editDistance(lower, strings.ToLower(n), bestD); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, or limit when it is
// at least that.
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin >= limit {
			return limit
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}
