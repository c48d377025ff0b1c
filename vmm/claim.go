package vmm

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// ServeClaim is the VMM process's side of a claim (Adopt) on a newly
// accepted lifeline connection: it reads the claimer's Claim, applies it
// with apply and answers with apply's error, which it returns.
func ServeClaim(conn net.Conn, apply func(Claim) error) error {
	if err := conn.SetDeadline(time.Now().Add(claimTimeout)); err != nil {
		return err
	}
	defer conn.SetDeadline(time.Time{})
	line, err := readLine(conn)
	if err != nil {
		return fmt.Errorf("claim request: %w", err)
	}
	var req Claim
	err = json.Unmarshal(line, &req)
	if err == nil {
		err = apply(req)
	}
	rep := claimReply{}
	return answer(conn, &rep, &rep.Error, err)
}
