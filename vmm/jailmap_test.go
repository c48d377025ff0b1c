package vmm

import (
	"reflect"
	"testing"

	"github.com/msb-dev/msb/mounts"
)

func TestParseJailMap(t *testing.T) {
	kept := []mounts.IDRange{{Start: 1000, Size: 100000}}
	base, got, err := parseJailMap([]byte(idMapLines(JailIDBase, kept)))
	if err != nil || base != JailIDBase || !reflect.DeepEqual(got, kept) {
		t.Fatalf("parseJailMap(idMapLines) = %d, %v, %v", base, got, err)
	}
	for _, bad := range []string{
		"0 0 4294967295",                             // the host's: never joined
		"0 2147483648 65536\n65536 0 1",              // host root
		"0 2147483648 65536\n100000 200000 65536",    // neither range nor kept
		"0 2147483648 70000",                         // past the VM's range
		"         0          0 4294967295\n garbage", // unreadable
	} {
		if _, _, err := parseJailMap([]byte(bad)); err == nil {
			t.Errorf("parseJailMap(%q): no error", bad)
		}
	}
}
