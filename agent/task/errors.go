package task

import (
	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ToStatus turns an errdefs-classified error into a gRPC status error, which
// ttrpc carries to the host with its code (containerd's clients map the code
// back to errdefs). Errors that already carry a status pass through.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var c codes.Code
	switch {
	case errdefs.IsInvalidArgument(err):
		c = codes.InvalidArgument
	case errdefs.IsNotFound(err):
		c = codes.NotFound
	case errdefs.IsAlreadyExists(err):
		c = codes.AlreadyExists
	case errdefs.IsFailedPrecondition(err), errdefs.IsConflict(err):
		c = codes.FailedPrecondition
	case errdefs.IsUnavailable(err):
		c = codes.Unavailable
	case errdefs.IsPermissionDenied(err):
		c = codes.PermissionDenied
	case errdefs.IsResourceExhausted(err):
		c = codes.ResourceExhausted
	case errdefs.IsNotImplemented(err):
		c = codes.Unimplemented
	case errdefs.IsCanceled(err):
		c = codes.Canceled
	case errdefs.IsDeadlineExceeded(err):
		c = codes.DeadlineExceeded
	default:
		c = codes.Unknown
	}
	return status.Error(c, err.Error())
}
