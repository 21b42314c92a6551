package capture

import (
	"fmt"
	"math"

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
