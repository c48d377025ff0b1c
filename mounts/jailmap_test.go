package mounts

import (
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestJailMap(t *testing.T) {
	const base = 1 << 31
	m := func(in, host, size uint32) specs.LinuxIDMapping {
		return specs.LinuxIDMapping{ContainerID: in, HostID: host, Size: size}
	}
	for _, c := range []struct {
		name string
		kept []IDRange
		want []specs.LinuxIDMapping
	}{
		{"none", nil, []specs.LinuxIDMapping{m(0, base, 65536)}},
		{"above", []IDRange{{100000, 65536}}, []specs.LinuxIDMapping{m(0, base, 65536), m(100000, 100000, 65536)}},
		// critest's mapping: 0 → 1000, 100000 ids.
		{"inside", []IDRange{{1000, 100000}}, []specs.LinuxIDMapping{m(0, base, 1000), m(1000, 1000, 100000)}},
		{"two", []IDRange{{10, 10}, {30, 5}}, []specs.LinuxIDMapping{m(0, base, 10), m(10, 10, 10), m(20, base+20, 10), m(30, 30, 5), m(35, base+35, 65501)}},
	} {
		if got := JailMap(base, c.kept); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: JailMap = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestKeptIDsOf(t *testing.T) {
	ms := func(host, size uint32) []specs.LinuxIDMapping {
		return []specs.LinuxIDMapping{{ContainerID: 0, HostID: host, Size: size}}
	}
	k, err := KeptIDsOf(ms(100000, 65536), ms(100000, 65536))
	if err != nil || !reflect.DeepEqual(k, &KeptIDs{UIDs: []IDRange{{100000, 65536}}, GIDs: []IDRange{{100000, 65536}}}) {
		t.Fatalf("KeptIDsOf = %v, %v", k, err)
	}
	if !k.Covers(ms(100000, 10), nil) || k.Covers(ms(99999, 10), nil) || k.Covers(ms(160000, 10000), nil) {
		t.Error("Covers is wrong")
	}
	for _, bad := range [][]specs.LinuxIDMapping{ms(0, 65536), ms(1<<31-10, 65536), ms(5, 0),
		append(ms(100000, 100), ms(100050, 100)...)} {
		if k, err := KeptIDsOf(bad, nil); err == nil {
			t.Errorf("KeptIDsOf(%v) = %v, want an error", bad, k)
		}
	}
}
