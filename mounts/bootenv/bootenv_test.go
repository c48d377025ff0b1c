package bootenv

import (
	"reflect"
	"sort"
	"strings"
	"testing"
)

// full uses every field and option, so the round-trip tests cover all of
// the grammar at once.
func full() Env {
	return Env{
		DirMounts: []DirMount{
			{Tag: "rootfs-0123abcd", GuestPath: "/run/msb/shares/rootfs-0123abcd"},
			{Tag: "data-89abcdef", GuestPath: "/run/msb/shares/data-89abcdef", ReadOnly: true},
		},
		FileMounts: []FileMount{
			{Tag: "hosts-00112233", Name: "hosts", GuestPath: "/run/msb/files/hosts-00112233"},
			{Tag: "cfg-44556677", Name: "app,v=1.conf", GuestPath: "/run/msb/files/cfg-44556677", ReadOnly: true},
		},
		DiskMounts: []DiskMount{
			{Tag: "disk-aabbccdd", GuestPath: "/run/msb/disks/a", FSType: "ext4", Options: []string{"noatime", "data=ordered"}},
			{Tag: "disk-eeff0011", GuestPath: "/run/msb/disks/b", ReadOnly: true},
			{Tag: "disk-22334455", GuestPath: "/run/msb/disks/c", FSType: "xfs", ReadOnly: true, Options: []string{"nouuid"}},
		},
		Tmpfs: []Tmpfs{
			{GuestPath: "/run/msb/tmpfs/a"},
			{GuestPath: "/run/msb/tmpfs/b", SizeBytes: 64 << 20, Mode: 0o1777, Options: []string{"nosuid", "nodev", "noexec", "ro"}},
			{GuestPath: "/run/msb/tmpfs/c", Mode: 0o700},
		},
		PodTmpfs: []Tmpfs{
			{GuestPath: "/run/msb/podtmpfs/a", SizeBytes: 1 << 20},
			{GuestPath: "/run/msb/podtmpfs/b"},
		},
		Rlimits: []Rlimit{
			{Resource: 7, Soft: 1024, Hard: 4096},
			{Resource: 4, Soft: RlimInfinity, Hard: RlimInfinity},
			{Resource: 0, Soft: 0, Hard: 0},
		},
		Hostname:        "web-1",
		User:            "1000:100",
		HandoffInit:     "/sbin/init",
		HandoffInitArgs: []string{"/sbin/init", "--log=<debug>", "a b", "ünï", ""},
		HandoffInitEnv:  []string{"PATH=/usr/bin:/bin", "X=a;b,c"},
	}
}

func TestEncodeFull(t *testing.T) {
	got, err := full().Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"MSB_DIR_MOUNTS=rootfs-0123abcd:/run/msb/shares/rootfs-0123abcd;data-89abcdef:/run/msb/shares/data-89abcdef:ro",
		"MSB_DISK_MOUNTS=disk-aabbccdd:/run/msb/disks/a:ext4:noatime,data=ordered;disk-eeff0011:/run/msb/disks/b::ro;disk-22334455:/run/msb/disks/c:xfs:ro:nouuid",
		"MSB_FILE_MOUNTS=hosts-00112233:hosts:/run/msb/files/hosts-00112233;cfg-44556677:app,v=1.conf:/run/msb/files/cfg-44556677:ro",
		"MSB_HANDOFF_INIT=/sbin/init",
		"", // args: checked below
		"", // env: checked below
		"MSB_HOSTNAME=web-1",
		"MSB_POD_TMPFS=/run/msb/podtmpfs/a:size=1048576;/run/msb/podtmpfs/b",
		"MSB_RLIMITS=7=1024:4096;4=18446744073709551615:18446744073709551615;0=0:0",
		"MSB_TMPFS=/run/msb/tmpfs/a;/run/msb/tmpfs/b:size=67108864,mode=01777,nosuid,nodev,noexec,ro;/run/msb/tmpfs/c:mode=0700",
		"MSB_USER=1000:100",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if want[i] == "" {
			continue
		}
		if got[i] != want[i] {
			t.Errorf("entry %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
	if !sort.StringsAreSorted(got) {
		t.Errorf("not sorted: %q", got)
	}
	if !strings.HasPrefix(got[4], "MSB_HANDOFF_INIT_ARGS=") || !strings.HasPrefix(got[5], "MSB_HANDOFF_INIT_ENV=") {
		t.Errorf("handoff lists missing: %q %q", got[4], got[5])
	}
	// base64url without padding: no '=' after the key's, no '+' or '/'.
	for _, kv := range got[4:6] {
		_, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(v, "=+/") {
			t.Errorf("%s: not unpadded base64url", kv)
		}
	}
	if want := "WyJQQVRIPS91c3IvYmluOi9iaW4iLCJYPWE7YixjIl0"; got[5] != KeyHandoffInitEnv+"="+want {
		t.Errorf("env: got %s want %s", got[5], want)
	}
}

func TestRoundTrip(t *testing.T) {
	cases := map[string]Env{
		"empty":    {},
		"full":     full(),
		"hostname": {Hostname: "a"},
		"user":     {User: "0:0"},
		"init":     {HandoffInit: "/init"},
		"init args only": {
			HandoffInit: "/init", HandoffInitArgs: []string{"x"},
		},
		"disk bare":       {DiskMounts: []DiskMount{{Tag: "t", GuestPath: "/d"}}},
		"disk opts no ro": {DiskMounts: []DiskMount{{Tag: "t", GuestPath: "/d", Options: []string{"x=y"}}}},
		"disk ro opts no fstype": {
			DiskMounts: []DiskMount{{Tag: "t", GuestPath: "/d", ReadOnly: true, Options: []string{"x"}}},
		},
		"tmpfs size only": {Tmpfs: []Tmpfs{{GuestPath: "/t", SizeBytes: 1}}},
		"tmpfs flag only": {Tmpfs: []Tmpfs{{GuestPath: "/t", Options: []string{"ro"}}}},
		"tmpfs max":       {Tmpfs: []Tmpfs{{GuestPath: "/t", SizeBytes: 1<<63 - 1, Mode: 0o7777}}},
		"root guest path": {DirMounts: []DirMount{{Tag: "A.b_c-9", GuestPath: "/"}}},
		"max tag":         {DirMounts: []DirMount{{Tag: strings.Repeat("x", MaxTagLen), GuestPath: "/x"}}},
		"max hostname":    {Hostname: strings.Repeat("h", MaxHostnameLen)},
		"max user":        {User: "4294967295:4294967295"},
		"rlimit 15":       {Rlimits: []Rlimit{{Resource: 15, Soft: 1, Hard: 2}}},
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) {
			enc, err := e.Encode()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(enc)
			if err != nil {
				t.Fatalf("Parse(%q): %v", enc, err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, e)
			}
			enc2, err := got.Encode()
			if err != nil || !reflect.DeepEqual(enc, enc2) {
				t.Fatalf("re-encode: %v\n%q\n%q", err, enc, enc2)
			}
		})
	}
}

func TestParseIgnoresOtherKeys(t *testing.T) {
	e, err := Parse([]string{"PATH=/bin", "HOME", "msb_hostname=x", "TERM=", "MSB_HOSTNAME=h", "=x"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(e, Env{Hostname: "h"}) {
		t.Fatalf("got %#v", e)
	}
	if e, err := Parse(nil); err != nil || !reflect.DeepEqual(e, Env{}) {
		t.Fatalf("Parse(nil) = %#v, %v", e, err)
	}
}

func TestParseUnsortedInput(t *testing.T) {
	in := []string{"MSB_USER=1:2", "MSB_HOSTNAME=h"}
	e, err := Parse(in)
	if err != nil {
		t.Fatal(err)
	}
	if e.User != "1:2" || e.Hostname != "h" {
		t.Fatalf("got %#v", e)
	}
}

func TestParseErrors(t *testing.T) {
	b64 := func(e Env, key string) string {
		enc, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range enc {
			if k, v, _ := strings.Cut(kv, "="); k == key {
				return v
			}
		}
		t.Fatalf("no %s", key)
		return ""
	}
	argsOK := b64(Env{HandoffInit: "/i", HandoffInitArgs: []string{"a"}}, KeyHandoffInitArgs)
	cases := []struct {
		name string
		env  []string
		want []string // substrings of the error
	}{
		{"unknown key", []string{"MSB_FOO=1"}, []string{"MSB_FOO", "unknown"}},
		{"no equals", []string{"MSB_HOSTNAME"}, []string{"MSB_HOSTNAME", "missing '='"}},
		{"twice", []string{"MSB_HOSTNAME=a", "MSB_HOSTNAME=a"}, []string{"MSB_HOSTNAME", "twice"}},
		{"empty value", []string{"MSB_TMPFS="}, []string{"MSB_TMPFS", "empty value"}},

		{"dir one field", []string{"MSB_DIR_MOUNTS=t"}, []string{"MSB_DIR_MOUNTS entry 0", "1 fields"}},
		{"dir four fields", []string{"MSB_DIR_MOUNTS=t:/a:ro:x"}, []string{"entry 0", "4 fields"}},
		{"dir bad ro", []string{"MSB_DIR_MOUNTS=t:/a:rw"}, []string{"field 2 (ro)", `must be "ro"`}},
		{"dir empty entry", []string{"MSB_DIR_MOUNTS=t:/a;;u:/b"}, []string{"entry 1", "empty entry"}},
		{"dir trailing sep", []string{"MSB_DIR_MOUNTS=t:/a;"}, []string{"entry 1", "empty entry"}},
		{"dir empty tag", []string{"MSB_DIR_MOUNTS=:/a"}, []string{"MSB_DIR_MOUNTS entry 0 field tag", "empty"}},
		{"dir long tag", []string{"MSB_DIR_MOUNTS=" + strings.Repeat("a", 21) + ":/a"}, []string{"field tag", "20 bytes"}},
		{"dir tag char", []string{"MSB_DIR_MOUNTS=a/b:/a"}, []string{"field tag", "'/'"}},
		{"dir relative", []string{"MSB_DIR_MOUNTS=t:a"}, []string{"field guestpath", "absolute"}},
		{"dir unclean", []string{"MSB_DIR_MOUNTS=t:/a/../b"}, []string{"field guestpath", "clean"}},
		{"dir trailing slash", []string{"MSB_DIR_MOUNTS=t:/a/"}, []string{"field guestpath", "clean"}},
		{"dir comma", []string{"MSB_DIR_MOUNTS=t:/a,b"}, []string{"field guestpath", "','"}},
		{"dir equals", []string{"MSB_DIR_MOUNTS=t:/a=b"}, []string{"field guestpath", "'='"}},
		{"dir newline", []string{"MSB_DIR_MOUNTS=t:/a\nb"}, []string{"field guestpath", "control"}},
		{"dir nul", []string{"MSB_DIR_MOUNTS=t:/a\x00b"}, []string{"field guestpath", "control"}},
		{"dup guest path", []string{"MSB_DIR_MOUNTS=t:/a", "MSB_TMPFS=/a"}, []string{"MSB_TMPFS entry 0", "already used by MSB_DIR_MOUNTS entry 0"}},

		{"file two fields", []string{"MSB_FILE_MOUNTS=t:/a"}, []string{"MSB_FILE_MOUNTS entry 0", "2 fields"}},
		{"file five fields", []string{"MSB_FILE_MOUNTS=t:n:/a:ro:x"}, []string{"5 fields"}},
		{"file bad ro", []string{"MSB_FILE_MOUNTS=t:n:/a:x"}, []string{"field 3 (ro)"}},
		{"file dot name", []string{"MSB_FILE_MOUNTS=t:..:/a"}, []string{"field name", `".."`}},
		{"file slash name", []string{"MSB_FILE_MOUNTS=t:a/b:/a"}, []string{"field name", "'/'"}},
		{"file empty name", []string{"MSB_FILE_MOUNTS=t::/a"}, []string{"field name", "empty"}},
		{"file tab name", []string{"MSB_FILE_MOUNTS=t:a\tb:/a"}, []string{"field name", "control"}},
		{"file bad path", []string{"MSB_FILE_MOUNTS=t:n:x"}, []string{"field guestpath", "absolute"}},

		{"disk two fields", []string{"MSB_DISK_MOUNTS=t:/a"}, []string{"MSB_DISK_MOUNTS entry 0", "2 fields"}},
		{"disk six fields", []string{"MSB_DISK_MOUNTS=t:/a:ext4:ro:x:y"}, []string{"6 fields"}},
		{"disk five no ro", []string{"MSB_DISK_MOUNTS=t:/a:ext4:rw:x"}, []string{"field 3 (ro)"}},
		{"disk empty opts", []string{"MSB_DISK_MOUNTS=t:/a:ext4:"}, []string{"field 3 (options)", "empty"}},
		{"disk empty opts after ro", []string{"MSB_DISK_MOUNTS=t:/a:ext4:ro:"}, []string{"field 4 (options)", "empty"}},
		{"disk empty opt", []string{"MSB_DISK_MOUNTS=t:/a:ext4:a,,b"}, []string{"field options[1]", "empty"}},
		{"disk rw opt", []string{"MSB_DISK_MOUNTS=t:/a:ext4:rw"}, []string{"field options[0]", "ReadOnly"}},
		{"disk ro as opt", []string{"MSB_DISK_MOUNTS=t:/a:ext4:ro:ro"}, []string{"field options[0]", "ReadOnly"}},
		{"disk fstype", []string{"MSB_DISK_MOUNTS=t:/a:ext 4"}, []string{"field fstype", "' '"}},
		{"disk dup tag", []string{"MSB_DISK_MOUNTS=t:/a:;t:/b:"}, []string{"entry 1 field tag", "already used by MSB_DISK_MOUNTS entry 0"}},
		{"disk empty tag", []string{"MSB_DISK_MOUNTS=:/a:"}, []string{"field tag", "empty"}},

		{"tmpfs three fields", []string{"MSB_TMPFS=/a:size=1:x"}, []string{"MSB_TMPFS entry 0", "3 fields"}},
		{"tmpfs empty opts", []string{"MSB_TMPFS=/a:"}, []string{"field 1 (options)", "unknown"}},
		{"tmpfs unknown", []string{"MSB_TMPFS=/a:exec"}, []string{"option 0", `"exec"`, "unknown"}},
		{"tmpfs size suffix", []string{"MSB_TMPFS=/a:size=1m"}, []string{"size in bytes", "not a decimal"}},
		{"tmpfs size zero", []string{"MSB_TMPFS=/a:size=0"}, []string{"size=0"}},
		{"tmpfs size lead zero", []string{"MSB_TMPFS=/a:size=01"}, []string{"leading zeros"}},
		{"tmpfs size huge", []string{"MSB_TMPFS=/a:size=9223372036854775808"}, []string{"out of range"}},
		{"tmpfs size negative", []string{"MSB_TMPFS=/a:size=-1"}, []string{"not a decimal"}},
		{"tmpfs size after mode", []string{"MSB_TMPFS=/a:mode=0755,size=1"}, []string{"size= must come first"}},
		{"tmpfs mode after flag", []string{"MSB_TMPFS=/a:ro,mode=0755"}, []string{"mode= must come before"}},
		{"tmpfs size twice", []string{"MSB_TMPFS=/a:size=1,size=2"}, []string{"size= must come first"}},
		{"tmpfs mode no zero", []string{"MSB_TMPFS=/a:mode=755"}, []string{"leading 0"}},
		{"tmpfs mode two zeros", []string{"MSB_TMPFS=/a:mode=00755"}, []string{"one leading 0"}},
		{"tmpfs mode zero", []string{"MSB_TMPFS=/a:mode=0"}, []string{"leading 0"}},
		{"tmpfs mode big", []string{"MSB_TMPFS=/a:mode=010000"}, []string{"07777"}},
		{"tmpfs mode 8", []string{"MSB_TMPFS=/a:mode=08"}, []string{"octal"}},
		{"tmpfs dup flag", []string{"MSB_TMPFS=/a:ro,ro"}, []string{"MSB_TMPFS entry 0 field options[1]", "twice"}},
		{"tmpfs bad path", []string{"MSB_TMPFS=rel"}, []string{"field guestpath", "absolute"}},

		{"rlimit no eq", []string{"MSB_RLIMITS=7"}, []string{"MSB_RLIMITS entry 0", "resource=soft:hard"}},
		{"rlimit no colon", []string{"MSB_RLIMITS=7=1"}, []string{"resource=soft:hard"}},
		{"rlimit res", []string{"MSB_RLIMITS=x=1:1"}, []string{"resource", "not a decimal"}},
		{"rlimit res range", []string{"MSB_RLIMITS=16=1:1"}, []string{"field resource", "0..15"}},
		{"rlimit res big", []string{"MSB_RLIMITS=300=1:1"}, []string{"resource", "out of range"}},
		{"rlimit soft", []string{"MSB_RLIMITS=7=a:1"}, []string{"soft"}},
		{"rlimit hard", []string{"MSB_RLIMITS=7=1:18446744073709551616"}, []string{"hard", "out of range"}},
		{"rlimit soft>hard", []string{"MSB_RLIMITS=7=2:1"}, []string{"MSB_RLIMITS entry 0", "exceeds"}},
		{"rlimit dup", []string{"MSB_RLIMITS=7=1:1;7=2:2"}, []string{"entry 1 field resource", "already set"}},
		{"rlimit empty entry", []string{"MSB_RLIMITS=7=1:1;"}, []string{"entry 1"}},
		{"rlimit lead zero", []string{"MSB_RLIMITS=07=1:1"}, []string{"leading zeros"}},

		{"hostname long", []string{"MSB_HOSTNAME=" + strings.Repeat("h", 65)}, []string{"MSB_HOSTNAME", "HOST_NAME_MAX"}},
		{"hostname newline", []string{"MSB_HOSTNAME=a\nb"}, []string{"MSB_HOSTNAME", "control"}},
		{"user no colon", []string{"MSB_USER=1000"}, []string{"MSB_USER", "uid:gid"}},
		{"user name", []string{"MSB_USER=root:0"}, []string{"MSB_USER", "uid", "not a decimal"}},
		{"user gid", []string{"MSB_USER=0:x"}, []string{"gid"}},
		{"user range", []string{"MSB_USER=4294967296:0"}, []string{"out of range"}},
		{"user extra", []string{"MSB_USER=1:2:3"}, []string{"gid"}},
		{"init relative", []string{"MSB_HANDOFF_INIT=sbin/init"}, []string{"MSB_HANDOFF_INIT", "absolute"}},
		{"init nul", []string{"MSB_HANDOFF_INIT=/a\x00"}, []string{"MSB_HANDOFF_INIT", "control"}},
		{"args without init", []string{"MSB_HANDOFF_INIT_ARGS=" + argsOK}, []string{"MSB_HANDOFF_INIT_ARGS", "without MSB_HANDOFF_INIT"}},
		{"args padded", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=" + argsOK + "=="}, []string{"MSB_HANDOFF_INIT_ARGS", "base64url"}},
		{"args std b64", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ENV=WyI/Il0"}, []string{"MSB_HANDOFF_INIT_ENV", "base64url"}},
		{"args not json", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=eyJ9"}, []string{"JSON array"}},
		{"args object", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=eyJhIjoxfQ"}, []string{"JSON array"}},
		{"args empty list", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=W10"}, []string{"empty list"}},
		{"args null", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=bnVsbA"}, []string{"empty list"}},
		// `[ "a"]`: valid JSON, but not the compact form Encode writes.
		{"args not compact", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=WyAiYSJd"}, []string{"canonical"}},
		// `["\u0061"]`
		{"args escaped", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=WyJcdTAwNjEiXQ"}, []string{"canonical"}},
		// `["\u0000"]`
		{"args nul", []string{"MSB_HANDOFF_INIT=/i", "MSB_HANDOFF_INIT_ARGS=WyJcdTAwMDAiXQ"}, []string{"MSB_HANDOFF_INIT_ARGS entry 0", "NUL"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := Parse(c.env)
			if err == nil {
				t.Fatalf("Parse(%q) = %#v, want error", c.env, e)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestEncodeErrors(t *testing.T) {
	cases := []struct {
		name string
		env  Env
		want []string
	}{
		{"dir tag", Env{DirMounts: []DirMount{{GuestPath: "/a"}}}, []string{"DirMounts[0].Tag", "empty"}},
		{"dir tag colon", Env{DirMounts: []DirMount{{Tag: "a:b", GuestPath: "/a"}}}, []string{"DirMounts[0].Tag", "':'"}},
		{"dir path semicolon", Env{DirMounts: []DirMount{{Tag: "a", GuestPath: "/a;b"}}}, []string{"DirMounts[0].GuestPath", "';'"}},
		{"dir path relative", Env{DirMounts: []DirMount{{Tag: "a", GuestPath: "a"}}}, []string{"DirMounts[0].GuestPath", "absolute"}},
		{"dir path empty", Env{DirMounts: []DirMount{{Tag: "a"}}}, []string{"DirMounts[0].GuestPath", "empty"}},
		{"file name colon", Env{FileMounts: []FileMount{{Tag: "a", Name: "x:y", GuestPath: "/a"}}}, []string{"FileMounts[0].Name", "':'"}},
		{"file name semicolon", Env{FileMounts: []FileMount{{Tag: "a", Name: "x;y", GuestPath: "/a"}}}, []string{"FileMounts[0].Name", "';'"}},
		{"file name newline", Env{FileMounts: []FileMount{{Tag: "a", Name: "x\ny", GuestPath: "/a"}}}, []string{"FileMounts[0].Name", "control"}},
		{"file tag", Env{FileMounts: []FileMount{{Name: "n", GuestPath: "/a"}}}, []string{"FileMounts[0].Tag"}},
		{"file path", Env{FileMounts: []FileMount{{Tag: "a", Name: "n", GuestPath: "/a:b"}}}, []string{"FileMounts[0].GuestPath"}},
		{"disk opt comma", Env{DiskMounts: []DiskMount{{Tag: "a", GuestPath: "/a", Options: []string{"a,b"}}}}, []string{"DiskMounts[0].Options[0]", "','"}},
		{"disk opt colon", Env{DiskMounts: []DiskMount{{Tag: "a", GuestPath: "/a", Options: []string{"a:b"}}}}, []string{"DiskMounts[0].Options[0]", "':'"}},
		{"disk opt ro", Env{DiskMounts: []DiskMount{{Tag: "a", GuestPath: "/a", Options: []string{"ro"}}}}, []string{"DiskMounts[0].Options[0]", "ReadOnly"}},
		{"disk fstype colon", Env{DiskMounts: []DiskMount{{Tag: "a", GuestPath: "/a", FSType: "a:b"}}}, []string{"DiskMounts[0].FSType"}},
		{"disk path", Env{DiskMounts: []DiskMount{{Tag: "a", GuestPath: "/a,b"}}}, []string{"DiskMounts[0].GuestPath"}},
		{"disk tag", Env{DiskMounts: []DiskMount{{Tag: "a;", GuestPath: "/a"}}}, []string{"DiskMounts[0].Tag"}},
		{"tmpfs size", Env{Tmpfs: []Tmpfs{{GuestPath: "/a", SizeBytes: -1}}}, []string{"Tmpfs[0].SizeBytes", "negative"}},
		{"tmpfs mode", Env{Tmpfs: []Tmpfs{{GuestPath: "/a", Mode: 0o10000}}}, []string{"Tmpfs[0].Mode", "07777"}},
		{"tmpfs flag", Env{Tmpfs: []Tmpfs{{GuestPath: "/a", Options: []string{"exec"}}}}, []string{"Tmpfs[0].Options[0]", "not a tmpfs flag"}},
		{"tmpfs path", Env{Tmpfs: []Tmpfs{{GuestPath: "/a=b"}}}, []string{"Tmpfs[0].GuestPath"}},
		{"pod tmpfs size", Env{PodTmpfs: []Tmpfs{{GuestPath: "/a", SizeBytes: -1}}}, []string{"PodTmpfs[0].SizeBytes", "negative"}},
		{"pod tmpfs flag", Env{PodTmpfs: []Tmpfs{{GuestPath: "/a", Options: []string{"ro"}}}}, []string{"PodTmpfs[0].Options", "no flags"}},
		{"pod tmpfs dup path", Env{Tmpfs: []Tmpfs{{GuestPath: "/a"}}, PodTmpfs: []Tmpfs{{GuestPath: "/a"}}},
			[]string{"PodTmpfs[0].GuestPath", "already used by Tmpfs[0].GuestPath"}},
		{"dup path", Env{DirMounts: []DirMount{{Tag: "a", GuestPath: "/a"}}, FileMounts: []FileMount{{Tag: "b", Name: "n", GuestPath: "/a"}}},
			[]string{"FileMounts[0].GuestPath", "already used by DirMounts[0].GuestPath"}},
		{"rlimit neg", Env{Rlimits: []Rlimit{{Resource: -1}}}, []string{"Rlimits[0].Resource", "0..15"}},
		{"rlimit soft", Env{Rlimits: []Rlimit{{Resource: 1, Soft: 2, Hard: 1}}}, []string{"Rlimits[0]", "exceeds"}},
		{"rlimit dup", Env{Rlimits: []Rlimit{{Resource: 1}, {Resource: 1}}}, []string{"Rlimits[1].Resource", "Rlimits[0]"}},
		{"hostname", Env{Hostname: "a\x00"}, []string{"Hostname", "control"}},
		{"user", Env{User: "root"}, []string{"User", "uid:gid"}},
		{"user neg", Env{User: "-1:0"}, []string{"User", "uid"}},
		{"init", Env{HandoffInit: "init"}, []string{"HandoffInit", "absolute"}},
		{"args no init", Env{HandoffInitArgs: []string{"a"}}, []string{"HandoffInitArgs", "without HandoffInit"}},
		{"env no init", Env{HandoffInitEnv: []string{"a=b"}}, []string{"HandoffInitEnv", "without HandoffInit"}},
		{"args utf8", Env{HandoffInit: "/i", HandoffInitArgs: []string{"\xff"}}, []string{"HandoffInitArgs[0]", "UTF-8"}},
		{"env nul", Env{HandoffInit: "/i", HandoffInitEnv: []string{"a", "b\x00"}}, []string{"HandoffInitEnv[1]", "NUL"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := c.env.Encode()
			if err == nil {
				t.Fatalf("Encode = %q, want error", out)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestKeysSortedAndComplete(t *testing.T) {
	ks := Keys()
	if !sort.StringsAreSorted(ks) {
		t.Fatalf("Keys not sorted: %q", ks)
	}
	enc, err := full().Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != len(ks) {
		t.Fatalf("full() sets %d keys, Keys has %d", len(enc), len(ks))
	}
	for i, kv := range enc {
		if !strings.HasPrefix(kv, ks[i]+"=") {
			t.Errorf("%s does not start with %s=", kv, ks[i])
		}
	}
}

func TestParseUser(t *testing.T) {
	u, g, err := ParseUser("1000:65534")
	if err != nil || u != 1000 || g != 65534 {
		t.Fatalf("got %d %d %v", u, g, err)
	}
}
