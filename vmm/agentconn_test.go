package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/msb-dev/msb/protocol"
)

func ttrpcMessage(id uint32, typ byte, body []byte) []byte {
	h := make([]byte, ttrpcHeaderSize)
	binary.BigEndian.PutUint32(h[0:4], uint32(len(body)))
	binary.BigEndian.PutUint32(h[4:8], id)
	h[8] = typ
	return append(h, body...)
}

// A guest that answers calls the host never made is not heard: the call
// the host made gets its answer, and the log gets a few lines, not one
// per message.
func TestAgentConnDropsUnaskedMessages(t *testing.T) {
	var logs bytes.Buffer
	out := log.L.Logger.Out
	log.L.Logger.SetOutput(&logs)
	defer log.L.Logger.SetOutput(out)

	host, guest := net.Pipe()
	defer guest.Close()
	c := ttrpc.NewClient(NewAgentConn(host))
	defer c.Close()
	go func() {
		hdr := make([]byte, ttrpcHeaderSize)
		if _, err := io.ReadFull(guest, hdr); err != nil {
			return
		}
		_, _ = io.CopyN(io.Discard, guest, int64(binary.BigEndian.Uint32(hdr[0:4])))
		id := binary.BigEndian.Uint32(hdr[4:8])
		payload, _ := proto.Marshal(wrapperspb.String("up"))
		resp, _ := proto.Marshal(&ttrpc.Response{Payload: payload})
		for i := uint32(0); i < 1000; i++ {
			_, _ = guest.Write(ttrpcMessage(id+2+2*i, ttrpcTypeResponse, resp))
		}
		_, _ = guest.Write(ttrpcMessage(id, ttrpcTypeResponse, resp))
		_, _ = io.Copy(io.Discard, guest)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := protocol.NewAgentClient(c).Status(ctx)
	if err != nil || got != "up" {
		t.Fatalf("Status = %q, %v", got, err)
	}
	if n := strings.Count(logs.String(), "\n"); n > guestFrameLogsBurst+1 {
		t.Fatalf("%d log lines for 1000 unasked messages, want at most %d:\n%.2000s", n, guestFrameLogsBurst+1, logs.String())
	}
}

// A message longer than ttrpc allows ends the connection unread.
func TestAgentConnOversizeMessage(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	h := ttrpcMessage(1, ttrpcTypeResponse, nil)
	binary.BigEndian.PutUint32(h[0:4], 1<<31)
	go func() { _, _ = guest.Write(h) }()
	if _, err := NewAgentConn(host).Read(make([]byte, 64)); err == nil || !strings.Contains(err.Error(), "over ttrpc's") {
		t.Fatalf("read of a 2 GiB message: %v", err)
	}
}
