package mounts

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// MaxTagLen is the length limit of a guest mount tag: a virtio-blk serial is
// 20 bytes, and the same tag must also be a valid 9p / virtio-fs tag.
const MaxTagLen = 20

// tagHashLen is the number of hex digits of sha256(key) in a tag (32 bits).
// The readable part does not need to be unique; the hash does that, and
// specconv additionally refuses two keys that map to one tag.
const tagHashLen = 8

// Tag returns the deterministic guest mount tag for key: a readable slug of
// the key's last words, '-', and 8 hex digits of sha256(key). It is at most
// MaxTagLen bytes of [a-z0-9-], so "/var/log" and "/var_log" share the slug
// "var-log" but not the hash.
func Tag(key string) string {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])[:tagHashLen]
	s := slug(key, MaxTagLen-tagHashLen-1)
	if s == "" {
		return h
	}
	return s + "-" + h
}

// slug keeps the last words of key (runs of [a-z0-9] after lowercasing)
// that fit in max bytes joined by '-'; if even the last word is too long,
// its first max bytes.
func slug(key string, max int) string {
	words := strings.FieldsFunc(strings.ToLower(key), func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	})
	if len(words) == 0 {
		return ""
	}
	last := words[len(words)-1]
	if len(last) > max {
		return last[:max]
	}
	out := last
	for i := len(words) - 2; i >= 0; i-- {
		if len(words[i])+1+len(out) > max {
			break
		}
		out = words[i] + "-" + out
	}
	return out
}
