//go:build !cgo

package jail

import (
	"errors"
	"os"

	"github.com/msb-dev/msb/mounts"
)

func NewUserNS(base uint32, kept *mounts.KeptIDs, hostIDs bool) (*os.File, error) {
	return nil, errors.New("this msb-runtime was built with CGO_ENABLED=0: running qemu as an unprivileged user (a user namespace) needs cgo; rebuild with CGO_ENABLED=1 (the default where gcc is installed)")
}

const userNSBuilt = false
