package jail

import (
	"reflect"
	"testing"

	"github.com/msb-dev/msb/mounts"
)

func TestParseJailMap(t *testing.T) {
	kept := []mounts.IDRange{{Start: 1000, Size: 100000}}
	got, err := parseIDMap([]byte(idMap{base: IDBase, kept: kept}.lines()))
	if err != nil || got.base != IDBase || !reflect.DeepEqual(got.kept, kept) || got.hostIDs || got.qemuID() != 0 {
		t.Fatalf("parseIDMap(lines) = %+v, %v", got, err)
	}
	base := uint32(IDBase + 3*IDSize)
	got, err = parseIDMap([]byte(idMap{base: base, hostIDs: true}.lines()))
	if err != nil || got.base != base || got.kept != nil || !got.hostIDs || got.qemuID() != IDBase {
		t.Fatalf("parseIDMap(host-ids lines) = %+v, %v", got, err)
	}
	for _, bad := range []string{
		"0 0 4294967295",                              // the host's: never joined
		"0 2147483648 65536\n65536 0 1",               // host root
		"0 2147483648 65536\n100000 200000 65536",     // neither range nor kept
		"0 2147483648 70000",                          // past the VM's range
		"0 100000 65536",                              // not one of msb's ranges
		"0 0 2147483648\n2147483648 0 65536",          // host ids, qemu as host root
		"0 0 2147483648\n2147483648 100000 65536",     // host ids, qemu not in msb's ranges
		"0 0 2147483648\n2147483648 2147483648 70000", // host ids, past the VM's range
		"0 0 2147483649\n2147483649 2147483648 65536", // host ids reaching msb's ranges
		"         0          0 4294967295\n garbage",  // unreadable
	} {
		if _, err := parseIDMap([]byte(bad)); err == nil {
			t.Errorf("parseIDMap(%q): no error", bad)
		}
	}
}
