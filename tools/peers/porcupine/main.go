// porcupine-check: is a history of key-value operations linearizable?
//
// It reads a JSON history (tests/harness/history.py writes them) from stdin or -in:
//
//	{"ops": [
//	   {"client": 0, "call": 10, "return": 20, "op": "put", "key": "k0", "value": "v1",
//	    "status": "ok", "rev": 5},
//	   {"client": 1, "call": 15, "return": 30, "op": "get", "key": "k0",
//	    "status": "ok", "rev": 6, "read_found": true, "read_value": "v1", "read_mod_rev": 5},
//	   {"client": 2, "call": 40, "return": 50, "op": "cas", "key": "k0", "expected": "v1",
//	    "value": "v2", "status": "ok", "succeeded": true, "rev": 7},
//	   {"client": 3, "call": 41, "return": null, "op": "put", "key": "k0", "value": "v3",
//	    "status": "unknown"}],
//	 "annotations": [{"start": 12, "end": 40, "description": "isolate m1"}]}
//
// and checks it with porcupine against a register per key (the history is partitioned by key,
// as etcd's robustness tests do): state = absent, or (value, mod revision). A get must return
// the register (value and mod revision); a put sets it at a revision above the key's previous
// mod revision; a CAS ("expected" value, or "expected_absent": true for create-if-absent) puts
// when the comparison holds and otherwise may report what it read ("read_*", the else branch).
//
// A write whose outcome is unknown ("status" anything but "ok": a timeout, an error, a lost
// connection) may or may not have been applied: it is given no return time (it can take effect
// at any point after its call, including never, i.e. after everything else). Unknown writes of
// values nobody ever observed are dropped first (values are unique, so such a write changed
// nothing anyone saw), which keeps the search small. Reads that failed are dropped.
//
// Exit status: 0 linearizable, 1 a violation (the keys whose histories are not linearizable are
// printed), 2 the check timed out, 3 bad input. -html writes porcupine's visualization.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

type jsonOp struct {
	Client         int     `json:"client"`
	Call           int64   `json:"call"`
	Return         *int64  `json:"return"`
	Op             string  `json:"op"`
	Key            string  `json:"key"`
	Value          string  `json:"value"`
	Expected       *string `json:"expected"`
	ExpectedAbsent bool    `json:"expected_absent"`
	Status         string  `json:"status"`
	Error          string  `json:"error"`
	Rev            int64   `json:"rev"`
	Succeeded      bool    `json:"succeeded"`
	ReadFound      *bool   `json:"read_found"`
	ReadValue      string  `json:"read_value"`
	ReadModRev     int64   `json:"read_mod_rev"`
	Member         string  `json:"member"`
}

type jsonAnnotation struct {
	Start       int64  `json:"start"`
	End         int64  `json:"end"`
	Description string `json:"description"`
	Details     string `json:"details"`
}

type jsonHistory struct {
	Ops         []jsonOp         `json:"ops"`
	Annotations []jsonAnnotation `json:"annotations"`
}

type input struct {
	Op             string // "get", "put", "cas"
	Key            string
	Value          string // put/cas: the value written
	Expected       string // cas
	ExpectedAbsent bool   // cas: create if absent
}

type output struct {
	Known      bool // false: the outcome is unknown (writes only)
	Rev        int64
	Succeeded  bool
	HasRead    bool // get, or a failed cas that read the key in its else branch
	ReadFound  bool
	ReadValue  string
	ReadModRev int64
}

// state of one key's register; ModRev 0 with Exists: written by an unknown-outcome write,
// whose revision nobody has seen yet
type state struct {
	Exists bool
	Value  string
	ModRev int64
}

func matches(s state, in input) bool {
	if in.ExpectedAbsent {
		return !s.Exists
	}
	return s.Exists && s.Value == in.Expected
}

// read checks what a read returned against s; it returns the state refined with the
// observed mod revision
func read(s state, out output) (bool, state) {
	if out.ReadFound != s.Exists {
		return false, s
	}
	if !s.Exists {
		return true, s
	}
	if out.ReadValue != s.Value || (s.ModRev != 0 && s.ModRev != out.ReadModRev) {
		return false, s
	}
	return true, state{true, s.Value, out.ReadModRev}
}

func write(s state, in input, out output) (bool, state) {
	if !out.Known {
		return true, state{true, in.Value, 0}
	}
	if s.Exists && s.ModRev != 0 && out.Rev <= s.ModRev {
		return false, s // a later write has a revision no higher than an earlier one
	}
	return true, state{true, in.Value, out.Rev}
}

func step(st, inp, outp interface{}) (bool, interface{}) {
	s, in, out := st.(state), inp.(input), outp.(output)
	switch in.Op {
	case "get":
		return read(s, out)
	case "put":
		return write(s, in, out)
	case "cas":
		if !out.Known {
			if matches(s, in) {
				return true, state{true, in.Value, 0}
			}
			return true, s
		}
		if out.Succeeded {
			if !matches(s, in) {
				return false, s
			}
			return write(s, in, out)
		}
		if matches(s, in) {
			return false, s
		}
		if out.HasRead {
			return read(s, out)
		}
		return true, s
	}
	return false, s
}

func describeOp(inp, outp interface{}) string {
	in, out := inp.(input), outp.(output)
	res := "?"
	if out.Known {
		switch {
		case in.Op == "cas" && out.Succeeded:
			res = fmt.Sprintf("ok@%d", out.Rev)
		case out.HasRead && out.ReadFound:
			res = fmt.Sprintf("%q@%d", out.ReadValue, out.ReadModRev)
		case out.HasRead:
			res = "absent"
		case in.Op == "cas":
			res = "failed"
		default:
			res = fmt.Sprintf("ok@%d", out.Rev)
		}
	}
	switch in.Op {
	case "get":
		return fmt.Sprintf("get(%s) -> %s", in.Key, res)
	case "put":
		return fmt.Sprintf("put(%s, %q) -> %s", in.Key, in.Value, res)
	default:
		exp := fmt.Sprintf("%q", in.Expected)
		if in.ExpectedAbsent {
			exp = "absent"
		}
		return fmt.Sprintf("cas(%s, %s -> %q) -> %s", in.Key, exp, in.Value, res)
	}
}

func describeState(st interface{}) string {
	s := st.(state)
	if !s.Exists {
		return "absent"
	}
	if s.ModRev == 0 {
		return fmt.Sprintf("%q@?", s.Value)
	}
	return fmt.Sprintf("%q@%d", s.Value, s.ModRev)
}

var model = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(input).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init:              func() interface{} { return state{} },
	Step:              step,
	Equal:             func(a, b interface{}) bool { return a.(state) == b.(state) },
	DescribeOperation: describeOp,
	DescribeState:     describeState,
	DescribeOperationMetadata: func(info interface{}) string {
		if info == nil {
			return ""
		}
		return fmt.Sprint(info)
	},
}

// convert turns the JSON history into porcupine operations (dropping failed reads and
// unobserved unknown writes); it returns the operations and how many were dropped.
func convert(h jsonHistory) ([]porcupine.Operation, int, error) {
	observed := map[string]bool{}
	var maxTime int64
	for _, op := range h.Ops {
		if op.Call > maxTime {
			maxTime = op.Call
		}
		if op.Return != nil && *op.Return > maxTime {
			maxTime = *op.Return
		}
		if op.Status != "ok" {
			continue
		}
		if op.ReadFound != nil && *op.ReadFound {
			observed[op.Key+"\x00"+op.ReadValue] = true
		}
		if op.Op == "cas" && op.Succeeded && !op.ExpectedAbsent && op.Expected != nil {
			observed[op.Key+"\x00"+*op.Expected] = true
		}
	}
	var ops []porcupine.Operation
	dropped := 0
	for i, op := range h.Ops {
		known := op.Status == "ok"
		in := input{Op: op.Op, Key: op.Key, Value: op.Value, ExpectedAbsent: op.ExpectedAbsent}
		switch op.Op {
		case "get":
			if !known {
				dropped++
				continue
			}
		case "put":
		case "cas":
			if op.Expected == nil && !op.ExpectedAbsent {
				return nil, 0, fmt.Errorf("op %d: cas needs expected or expected_absent", i)
			}
			if op.Expected != nil {
				in.Expected = *op.Expected
			}
		default:
			return nil, 0, fmt.Errorf("op %d: unknown op %q", i, op.Op)
		}
		if !known && !observed[op.Key+"\x00"+op.Value] {
			dropped++
			continue
		}
		out := output{Known: known, Rev: op.Rev, Succeeded: op.Succeeded}
		if known && op.ReadFound != nil {
			out.HasRead = true
			out.ReadFound = *op.ReadFound
			out.ReadValue = op.ReadValue
			out.ReadModRev = op.ReadModRev
		}
		if known && op.Op == "get" && !out.HasRead {
			return nil, 0, fmt.Errorf("op %d: a successful get needs read_found", i)
		}
		ret := maxTime + 1
		if known {
			if op.Return == nil {
				return nil, 0, fmt.Errorf("op %d: an ok operation needs a return time", i)
			}
			ret = *op.Return
		}
		if ret < op.Call {
			return nil, 0, fmt.Errorf("op %d: returns (%d) before its call (%d)", i, ret, op.Call)
		}
		var meta interface{}
		if op.Member != "" || op.Error != "" {
			meta = fmt.Sprintf("member=%s %s", op.Member, op.Error)
		}
		ops = append(ops, porcupine.Operation{
			ClientId: op.Client, Input: in, Call: op.Call, Output: out, Return: ret, Metadata: meta,
		})
	}
	return ops, dropped, nil
}

func main() {
	inPath := flag.String("in", "-", "the JSON history (- for stdin)")
	htmlPath := flag.String("html", "", "write porcupine's visualization of the history here")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up (exit 2) after this long")
	flag.Parse()

	var r io.Reader = os.Stdin
	if *inPath != "-" {
		f, err := os.Open(*inPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "porcupine-check:", err)
			os.Exit(3)
		}
		defer f.Close()
		r = f
	}
	var h jsonHistory
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		fmt.Fprintln(os.Stderr, "porcupine-check: bad history:", err)
		os.Exit(3)
	}
	ops, dropped, err := convert(h)
	if err != nil {
		fmt.Fprintln(os.Stderr, "porcupine-check: bad history:", err)
		os.Exit(3)
	}
	keys := map[string]bool{}
	for _, op := range ops {
		keys[op.Input.(input).Key] = true
	}

	started := time.Now()
	var res porcupine.CheckResult
	if *htmlPath != "" {
		var info porcupine.LinearizationInfo
		res, info = porcupine.CheckOperationsVerbose(model, ops, *timeout)
		var anns []porcupine.Annotation
		for _, a := range h.Annotations {
			anns = append(anns, porcupine.Annotation{
				Tag: "faults", Start: a.Start, End: a.End, Description: a.Description, Details: a.Details,
				BackgroundColor: "#ffd6d6",
			})
		}
		info.AddAnnotations(anns)
		if err := porcupine.VisualizePath(model, info, *htmlPath); err != nil {
			fmt.Fprintln(os.Stderr, "porcupine-check: visualization:", err)
		}
	} else {
		res = porcupine.CheckOperationsTimeout(model, ops, *timeout)
	}
	fmt.Printf("porcupine-check: %d operations (%d dropped: failed reads, unobserved unknown writes) on %d keys: %s in %s\n",
		len(ops), dropped, len(keys), res, time.Since(started).Round(time.Millisecond))
	switch res {
	case porcupine.Ok:
		os.Exit(0)
	case porcupine.Illegal:
		for _, part := range model.Partition(ops) {
			if porcupine.CheckOperationsTimeout(model, part, *timeout) == porcupine.Illegal {
				fmt.Printf("porcupine-check: key %q (%d operations) is not linearizable\n",
					part[0].Input.(input).Key, len(part))
			}
		}
		os.Exit(1)
	default:
		os.Exit(2)
	}
}
