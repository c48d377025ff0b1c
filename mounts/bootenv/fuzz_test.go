package bootenv

import (
	"reflect"
	"sort"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics and that whatever it accepts is
// canonical: it re-encodes to exactly the MSB_ entries it was given (sorted)
// and re-parses to the same value.
func FuzzParse(f *testing.F) {
	enc, err := full().Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(strings.Join(enc, "\n"))
	for _, kv := range enc {
		f.Add(kv)
	}
	f.Add("MSB_TMPFS=/a:size=1,mode=0755,ro\nPATH=/bin")
	f.Add("MSB_DISK_MOUNTS=t:/a::ro:x=y")
	f.Add("MSB_RLIMITS=7=1:2;0=0:0")
	f.Fuzz(func(t *testing.T, s string) {
		in := strings.Split(s, "\n")
		e, err := Parse(in)
		if err != nil {
			return
		}
		out, err := e.Encode()
		if err != nil {
			t.Fatalf("Parse accepted %q but Encode refuses %#v: %v", in, e, err)
		}
		var want []string
		for _, kv := range in {
			if strings.HasPrefix(kv, Prefix) {
				want = append(want, kv)
			}
		}
		sort.Strings(want)
		if len(want) == 0 {
			want = []string{}
		}
		if !reflect.DeepEqual(out, want) {
			t.Fatalf("Encode(Parse(x)) != x\n got %q\nwant %q", out, want)
		}
		e2, err := Parse(out)
		if err != nil || !reflect.DeepEqual(e, e2) {
			t.Fatalf("re-parse: %v\n%#v\n%#v", err, e, e2)
		}
	})
}

// gen builds an Env from fuzz bytes: mostly plausible values with hostile
// characters mixed in, so both the accept and the refuse paths are reached.
type gen struct{ b []byte }

func (g *gen) byte() byte {
	if len(g.b) == 0 {
		return 0
	}
	c := g.b[0]
	g.b = g.b[1:]
	return c
}

func (g *gen) n(max int) int { return int(g.byte()) % (max + 1) }

// str draws up to 6 characters from alphabet; the characters after the
// '|' in alphabet are hostile and drawn about one time in 32, so most values
// are valid and the accept path is exercised too.
func (g *gen) str(alphabet string) string {
	good, bad, _ := strings.Cut(alphabet, "|")
	n := g.n(6)
	var sb strings.Builder
	for i := 0; i < n; i++ {
		c := g.byte()
		if c%32 == 31 && bad != "" {
			sb.WriteByte(bad[int(c/32)%len(bad)])
		} else {
			sb.WriteByte(good[int(c)%len(good)])
		}
	}
	return sb.String()
}

const (
	tagChars  = "abz09_-.A|:;,= \n/"
	pathChars = "ab._-\xc3\xa9|/:;,=\x00"
	nameChars = "ab=, .<>&\"\\\xc3\xa9|/:;\x00\n\xff"
	anyChars  = "ab=:;, /<>&\"\\|\x00\n\xff\xc3"
)

func (g *gen) path() string { return "/" + g.str(pathChars) }

// tag is never empty unless the input runs out, so it is usually valid.
func (g *gen) tag() string { return string("tuvw"[g.n(3)]) + g.str(tagChars) }

func (g *gen) list(alphabet string) []string {
	var l []string
	for i, n := 0, g.n(3); i < n; i++ {
		l = append(l, g.str(alphabet))
	}
	return l
}

func (g *gen) env() Env {
	var e Env
	for i, n := 0, g.n(3); i < n; i++ {
		e.DirMounts = append(e.DirMounts, DirMount{Tag: g.tag(), GuestPath: g.path(), ReadOnly: g.n(1) == 1})
	}
	for i, n := 0, g.n(3); i < n; i++ {
		e.FileMounts = append(e.FileMounts, FileMount{Tag: g.tag(), Name: "n" + g.str(nameChars), GuestPath: g.path(), ReadOnly: g.n(1) == 1})
	}
	for i, n := 0, g.n(3); i < n; i++ {
		e.DiskMounts = append(e.DiskMounts, DiskMount{Tag: g.tag(), GuestPath: g.path(), FSType: g.str(tagChars),
			ReadOnly: g.n(1) == 1, Options: g.list("owx=|,:r")})
	}
	for i, n := 0, g.n(3); i < n; i++ {
		t := Tmpfs{GuestPath: g.path(), SizeBytes: int64(g.byte())<<int(g.n(62)) - int64(g.n(15)/15), Mode: uint32(g.byte()) << uint(g.n(5))}
		for j, m := 0, g.n(4); j < m; j++ {
			t.Options = append(t.Options, []string{"ro", "noexec", "nosuid", "nodev", "exec"}[g.n(4)])
		}
		e.Tmpfs = append(e.Tmpfs, t)
	}
	for i, n := 0, g.n(2); i < n; i++ {
		e.PodTmpfs = append(e.PodTmpfs, Tmpfs{GuestPath: g.path(), SizeBytes: int64(g.byte()) << int(g.n(62)), Mode: uint32(g.byte()) << uint(g.n(5))})
	}
	for i, n := 0, g.n(3); i < n; i++ {
		soft := uint64(g.byte()) << g.n(63)
		hard := soft + uint64(g.byte()) - uint64(g.n(15)/15)
		if g.n(7) == 0 {
			soft, hard = RlimInfinity, RlimInfinity
		}
		e.Rlimits = append(e.Rlimits, Rlimit{Resource: g.n(17) - 1, Soft: soft, Hard: hard})
	}
	if g.n(1) == 1 {
		e.Hostname = g.str(anyChars)
	}
	if g.n(1) == 1 {
		e.User = g.str("0123456789:|-a")
	}
	if g.n(1) == 1 {
		e.HandoffInit = g.path()
	}
	e.HandoffInitArgs = g.list(anyChars)
	e.HandoffInitEnv = g.list(anyChars)
	return e
}

// FuzzRoundTrip checks Parse(Encode(e)) == e for generated values, and that
// Encode never panics on invalid ones.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x01a\x01/b\x01\x02c\x03d\x01/e\x00"))
	f.Add([]byte("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e := (&gen{b: b}).env()
		out, err := e.Encode()
		if err != nil {
			return
		}
		got, err := Parse(out)
		if err != nil {
			t.Fatalf("Encode(%#v) = %q, but Parse refuses it: %v", e, out, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("round trip:\n got %#v\nwant %#v", got, e)
		}
	})
}
