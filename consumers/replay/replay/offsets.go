package replay

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// OffsetRange is one item of --offsets: offsets [Start, End) of a
// partition, where Start Unset means the log start and End Unset the high
// watermark at start-up.
type OffsetRange struct {
	Partition  int32
	Start, End int64
}

// Unset is an OffsetRange bound that was left empty.
const Unset = -1

// String formats r as --offsets spells it.
func (r OffsetRange) String() string {
	s := strconv.Itoa(int(r.Partition)) + ":"
	if r.Start != Unset {
		s += strconv.FormatInt(r.Start, 10)
	}
	s += "-"
	if r.End != Unset {
		s += strconv.FormatInt(r.End, 10)
	}
	return s
}

// ParseOffsets parses --offsets: comma-separated P:START-END items (END
// exclusive), where START or END may be empty and "P" alone is the whole
// partition. Each partition may appear once; the result is sorted by
// partition.
func ParseOffsets(s string) ([]OffsetRange, error) {
	var out []OffsetRange
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ps, span, hasSpan := strings.Cut(item, ":")
		p, err := strconv.ParseInt(ps, 10, 32)
		if err != nil || p < 0 {
			return nil, fmt.Errorf("%q: %q is not a partition number", item, ps)
		}
		r := OffsetRange{Partition: int32(p), Start: Unset, End: Unset}
		if hasSpan {
			start, end, ok := strings.Cut(span, "-")
			if !ok {
				return nil, fmt.Errorf("%q: want P:START-END (END exclusive; either may be empty)", item)
			}
			if r.Start, err = parseOffset(start); err != nil {
				return nil, fmt.Errorf("%q: start: %v", item, err)
			}
			if r.End, err = parseOffset(end); err != nil {
				return nil, fmt.Errorf("%q: end: %v", item, err)
			}
			if r.Start != Unset && r.End != Unset && r.End <= r.Start {
				return nil, fmt.Errorf("%q: the end %d must be greater than the start %d (the end is exclusive)", item, r.End, r.Start)
			}
		}
		if slices.ContainsFunc(out, func(o OffsetRange) bool { return o.Partition == r.Partition }) {
			return nil, fmt.Errorf("partition %d is given twice", r.Partition)
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%q names no partition: want P:START-END, comma-separated", s)
	}
	slices.SortFunc(out, func(a, b OffsetRange) int { return int(a.Partition) - int(b.Partition) })
	return out, nil
}

func parseOffset(s string) (int64, error) {
	if s == "" {
		return Unset, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n == math.MaxInt64 {
		return 0, fmt.Errorf("%q is not an offset", s)
	}
	return n, nil
}
