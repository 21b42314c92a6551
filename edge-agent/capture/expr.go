package capture

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/parser"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// A condition is parsed by expr-lang/expr's parser (its grammar,
// precedence and error positions) and compiled here into a tree of typed
// closures over the engine's signal slots: expr's own virtual machine
// boxes every number in an interface, one to four allocations an
// evaluation, where these closures allocate nothing.
//
// Values are numbers (float64), booleans or strings, each possibly not
// known yet (a signal not read yet, a windowed function without history):
// comparisons and arithmetic with an unknown operand are unknown, `and`
// and `or` follow three-valued logic (false and unknown is false), and a
// rule triggers only on a known true.

type valueKind uint8

const (
	numKind valueKind = iota + 1
	boolKind
	strKind
)

func (k valueKind) String() string {
	switch k {
	case numKind:
		return "number"
	case boolKind:
		return "boolean"
	}
	return "string"
}

type (
	numFn  func() (float64, bool)
	boolFn func() (bool, bool)
	strFn  func() (string, bool)
)

// value is a compiled sub-expression: one of the functions is set, as
// kind says.
type value struct {
	kind valueKind
	num  numFn
	bl   boolFn
	str  strFn
	// lit holds a string literal's text (function arguments such as "1s").
	lit   string
	isLit bool
}

// compiler compiles one rule's condition against an engine's slots.
type compiler struct {
	src string
	e   *Engine
	r   *rule
	// clock is set when the condition reads time (age, windowed
	// functions): the rule is then evaluated on every item, not only when
	// a signal it reads changes.
	clock bool
}

// compileCondition parses and compiles src for rule r of engine e.
func compileCondition(src string, e *Engine, r *rule) (boolFn, bool, error) {
	tree, err := parser.Parse(src)
	if err != nil {
		return nil, false, err
	}
	c := &compiler{src: src, e: e, r: r}
	v, err := c.compile(tree.Node)
	if err != nil {
		return nil, false, err
	}
	b, err := c.asBool(tree.Node, v)
	if err != nil {
		return nil, false, err
	}
	return b, c.clock, nil
}

func (c *compiler) errorf(n ast.Node, format string, a ...any) error {
	e := &file.Error{Location: n.Location(), Message: fmt.Sprintf(format, a...)}
	return e.Bind(file.NewSource(c.src))
}

func numValue(f numFn) value   { return value{kind: numKind, num: f} }
func boolValue(f boolFn) value { return value{kind: boolKind, bl: f} }

func constNum(x float64) value { return numValue(func() (float64, bool) { return x, true }) }

// asNum reads v as a number: a boolean is 1 or 0.
func (c *compiler) asNum(n ast.Node, v value) (numFn, error) {
	switch v.kind {
	case numKind:
		return v.num, nil
	case boolKind:
		b := v.bl
		return func() (float64, bool) {
			x, ok := b()
			if x {
				return 1, ok
			}
			return 0, ok
		}, nil
	}
	return nil, c.errorf(n, "a string where a number is needed")
}

// asBool reads v as a condition: a number is true when it is not 0.
func (c *compiler) asBool(n ast.Node, v value) (boolFn, error) {
	switch v.kind {
	case boolKind:
		return v.bl, nil
	case numKind:
		f := v.num
		return func() (bool, bool) {
			x, ok := f()
			return x != 0 && ok, ok
		}, nil
	}
	return nil, c.errorf(n, "a string where a condition is needed")
}

func (c *compiler) compile(n ast.Node) (value, error) {
	switch n := n.(type) {
	case *ast.IntegerNode:
		return constNum(float64(n.Value)), nil
	case *ast.FloatNode:
		return constNum(n.Value), nil
	case *ast.BoolNode:
		b := n.Value
		return boolValue(func() (bool, bool) { return b, true }), nil
	case *ast.StringNode:
		s := n.Value
		return value{kind: strKind, str: func() (string, bool) { return s, true }, lit: s, isLit: true}, nil
	case *ast.IdentifierNode, *ast.MemberNode:
		name, ok := signalName(n)
		if !ok {
			return value{}, c.errorf(n, "not a signal name")
		}
		return c.signal(n, name)
	case *ast.UnaryNode:
		return c.unary(n)
	case *ast.BinaryNode:
		return c.binary(n)
	case *ast.ConditionalNode:
		return c.conditional(n)
	case *ast.BuiltinNode:
		return c.call(n, n.Name, n.Arguments)
	case *ast.CallNode:
		id, ok := n.Callee.(*ast.IdentifierNode)
		if !ok {
			return value{}, c.errorf(n, "only the functions of a trigger can be called")
		}
		return c.call(n, id.Value, n.Arguments)
	}
	return value{}, c.errorf(n, "not supported in a trigger condition (signals, numbers, strings, arithmetic, comparisons, and/or/not, ?:, in [...] and the trigger functions are)")
}

// signalName flattens MESSAGE.SIGNAL (a member access to expr) back into
// the signal's name.
func signalName(n ast.Node) (string, bool) {
	switch n := n.(type) {
	case *ast.IdentifierNode:
		return n.Value, true
	case *ast.MemberNode:
		prop, ok := n.Property.(*ast.StringNode)
		if !ok || n.Optional || n.Method {
			return "", false
		}
		base, ok := signalName(n.Node)
		return base + "." + prop.Value, ok
	}
	return "", false
}

// signal reads a signal's latest value.
func (c *compiler) signal(n ast.Node, name string) (value, error) {
	s, err := c.e.conditionSlot(name)
	if err != nil {
		return value{}, c.errorf(n, "%v", err)
	}
	c.r.reads = append(c.r.reads, s)
	switch s.kind {
	case wire.KindString:
		return value{kind: strKind, str: func() (string, bool) { return s.str, s.known }}, nil
	case wire.KindBool:
		return boolValue(func() (bool, bool) { return s.num != 0, s.known }), nil
	}
	return numValue(func() (float64, bool) { return s.num, s.known }), nil
}

func (c *compiler) unary(n *ast.UnaryNode) (value, error) {
	v, err := c.compile(n.Node)
	if err != nil {
		return value{}, err
	}
	switch n.Operator {
	case "!", "not":
		b, err := c.asBool(n.Node, v)
		if err != nil {
			return value{}, err
		}
		return boolValue(func() (bool, bool) { x, ok := b(); return !x, ok }), nil
	case "-":
		f, err := c.asNum(n.Node, v)
		if err != nil {
			return value{}, err
		}
		return numValue(func() (float64, bool) { x, ok := f(); return -x, ok }), nil
	case "+":
		f, err := c.asNum(n.Node, v)
		return numValue(f), err
	}
	return value{}, c.errorf(n, "operator %q is not supported", n.Operator)
}

func (c *compiler) binary(n *ast.BinaryNode) (value, error) {
	if n.Operator == "in" {
		return c.in(n)
	}
	l, err := c.compile(n.Left)
	if err != nil {
		return value{}, err
	}
	r, err := c.compile(n.Right)
	if err != nil {
		return value{}, err
	}
	switch n.Operator {
	case "and", "&&", "or", "||":
		a, err := c.asBool(n.Left, l)
		if err != nil {
			return value{}, err
		}
		b, err := c.asBool(n.Right, r)
		if err != nil {
			return value{}, err
		}
		if n.Operator == "and" || n.Operator == "&&" {
			return boolValue(func() (bool, bool) {
				x, okx := a()
				if okx && !x {
					return false, true
				}
				y, oky := b()
				if oky && !y {
					return false, true
				}
				return okx && oky, okx && oky
			}), nil
		}
		return boolValue(func() (bool, bool) {
			x, okx := a()
			if okx && x {
				return true, true
			}
			y, oky := b()
			if oky && y {
				return true, true
			}
			return false, okx && oky
		}), nil
	case "==", "!=":
		return c.equal(n, l, r, n.Operator == "!=")
	case "<", "<=", ">", ">=":
		a, b, err := c.numbers(n, l, r)
		if err != nil {
			return value{}, err
		}
		var cmp func(x, y float64) bool
		switch n.Operator {
		case "<":
			cmp = func(x, y float64) bool { return x < y }
		case "<=":
			cmp = func(x, y float64) bool { return x <= y }
		case ">":
			cmp = func(x, y float64) bool { return x > y }
		default:
			cmp = func(x, y float64) bool { return x >= y }
		}
		return boolValue(func() (bool, bool) {
			x, okx := a()
			y, oky := b()
			return okx && oky && cmp(x, y), okx && oky
		}), nil
	case "+", "-", "*", "/", "%", "**", "^":
		a, b, err := c.numbers(n, l, r)
		if err != nil {
			return value{}, err
		}
		var op func(x, y float64) float64
		switch n.Operator {
		case "+":
			op = func(x, y float64) float64 { return x + y }
		case "-":
			op = func(x, y float64) float64 { return x - y }
		case "*":
			op = func(x, y float64) float64 { return x * y }
		case "/":
			op = func(x, y float64) float64 { return x / y }
		case "%":
			op = math.Mod
		default:
			op = math.Pow
		}
		return numValue(func() (float64, bool) {
			x, okx := a()
			y, oky := b()
			z := op(x, y)
			return z, okx && oky && !math.IsNaN(z) && !math.IsInf(z, 0) // x/0, a negative root: unknown
		}), nil
	}
	return value{}, c.errorf(n, "operator %q is not supported in a trigger condition", n.Operator)
}

func (c *compiler) numbers(n *ast.BinaryNode, l, r value) (numFn, numFn, error) {
	a, err := c.asNum(n.Left, l)
	if err != nil {
		return nil, nil, err
	}
	b, err := c.asNum(n.Right, r)
	return a, b, err
}

func (c *compiler) equal(n *ast.BinaryNode, l, r value, negate bool) (value, error) {
	if l.kind == strKind || r.kind == strKind {
		if l.kind != r.kind {
			return value{}, c.errorf(n, "compares a string with a %s", map[bool]valueKind{true: r.kind, false: l.kind}[l.kind == strKind])
		}
		a, b := l.str, r.str
		return boolValue(func() (bool, bool) {
			x, okx := a()
			y, oky := b()
			return okx && oky && (x == y) != negate, okx && oky
		}), nil
	}
	if l.kind == boolKind && r.kind == boolKind {
		a, b := l.bl, r.bl
		return boolValue(func() (bool, bool) {
			x, okx := a()
			y, oky := b()
			return okx && oky && (x == y) != negate, okx && oky
		}), nil
	}
	a, b, err := c.numbers(n, l, r)
	if err != nil {
		return value{}, err
	}
	return boolValue(func() (bool, bool) {
		x, okx := a()
		y, oky := b()
		return okx && oky && (x == y) != negate, okx && oky
	}), nil
}

// in compiles `x in [a, b, ...]`: equal to one of the listed values.
func (c *compiler) in(n *ast.BinaryNode) (value, error) {
	list, ok := n.Right.(*ast.ArrayNode)
	if !ok || len(list.Nodes) == 0 {
		return value{}, c.errorf(n.Right, "in wants a list such as [1, 2, 3]")
	}
	x, err := c.compile(n.Left)
	if err != nil {
		return value{}, err
	}
	var eqs []boolFn
	for _, item := range list.Nodes {
		v, err := c.compile(item)
		if err != nil {
			return value{}, err
		}
		eq, err := c.equal(&ast.BinaryNode{Operator: "==", Left: n.Left, Right: item}, x, v, false)
		if err != nil {
			return value{}, err
		}
		eqs = append(eqs, eq.bl)
	}
	return boolValue(func() (bool, bool) {
		known := true
		for _, f := range eqs {
			y, ok := f()
			if ok && y {
				return true, true
			}
			known = known && ok
		}
		return false, known
	}), nil
}

func (c *compiler) conditional(n *ast.ConditionalNode) (value, error) {
	cv, err := c.compile(n.Cond)
	if err != nil {
		return value{}, err
	}
	cond, err := c.asBool(n.Cond, cv)
	if err != nil {
		return value{}, err
	}
	a, err := c.compile(n.Exp1)
	if err != nil {
		return value{}, err
	}
	b, err := c.compile(n.Exp2)
	if err != nil {
		return value{}, err
	}
	if a.kind == boolKind && b.kind == boolKind {
		x, y := a.bl, b.bl
		return boolValue(func() (bool, bool) {
			if v, ok := cond(); !ok {
				return false, false
			} else if v {
				return x()
			}
			return y()
		}), nil
	}
	x, err := c.asNum(n.Exp1, a)
	if err != nil {
		return value{}, err
	}
	y, err := c.asNum(n.Exp2, b)
	if err != nil {
		return value{}, err
	}
	return numValue(func() (float64, bool) {
		if v, ok := cond(); !ok {
			return 0, false
		} else if v {
			return x()
		}
		return y()
	}), nil
}

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
