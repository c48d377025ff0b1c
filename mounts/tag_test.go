package mounts

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

var tagRE = regexp.MustCompile(`^[a-z0-9_-]{1,20}$`)

func TestTagExamples(t *testing.T) {
	cases := map[string]string{
		"dir:/var/log":                    "dir-var-log-",
		"dir:/var_log":                    "dir-var-log-",
		"dir:/var/lib/data":               "lib-data-",
		"rootfs:3f2a9c4d1e0b77aa":         "3f2a9c4d1e0-",
		"dir:/Users/Me/My Docs":           "me-my-docs-",
		"":                                "",
		"/":                               "",
		"dir:/a-very-long-component-name": "name-",
		"dir:/averylongcomponentname":     "averylongco-",
	}
	for key, prefix := range cases {
		tag := Tag(key)
		if !tagRE.MatchString(tag) {
			t.Errorf("Tag(%q) = %q: not [a-z0-9_-]{1,20}", key, tag)
		}
		if !strings.HasPrefix(tag, prefix) || len(tag) != len(prefix)+8 {
			t.Errorf("Tag(%q) = %q, want %q + 8 hex", key, tag, prefix)
		}
		if Tag(key) != tag {
			t.Errorf("Tag(%q) not deterministic", key)
		}
	}
	if Tag("dir:/var/log") == Tag("dir:/var_log") {
		t.Error("/var/log and /var_log collide")
	}
}

func TestTagNoCollisions(t *testing.T) {
	seen := map[string]string{}
	add := func(key string) {
		tag := Tag(key)
		if len(tag) > MaxTagLen || !tagRE.MatchString(tag) {
			t.Fatalf("Tag(%q) = %q: bad tag", key, tag)
		}
		if prev, ok := seen[tag]; ok && prev != key {
			t.Fatalf("Tag(%q) = Tag(%q) = %q", key, prev, tag)
		}
		seen[tag] = key
	}
	// Keys that differ only in separators, case or a suffix share slugs, so
	// only the hash keeps them apart.
	for i := 0; i < 20000; i++ {
		add(fmt.Sprintf("dir:/var/log/%d", i))
		add(fmt.Sprintf("dir:/var_log/%d", i))
		add(fmt.Sprintf("dir:/VAR/LOG/%d", i))
		add(fmt.Sprintf("file:/etc/hosts%d", i))
	}
	add("rootfs:")
	add("dir:")
	add("dir:/")
	add("file:/")
	add(strings.Repeat("x", 5000))
	add(strings.Repeat("x", 5001))
}

func FuzzTag(f *testing.F) {
	f.Add("dir:/var/log")
	f.Add("\xff\x00:;,")
	f.Fuzz(func(t *testing.T, key string) {
		tag := Tag(key)
		if !tagRE.MatchString(tag) {
			t.Fatalf("Tag(%q) = %q", key, tag)
		}
	})
}
