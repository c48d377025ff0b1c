package protocol

import (
	"context"
	"encoding/json"

	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// NetInterface is one guest NIC as the agent configures it in a
// container's network namespace: it takes over a host interface's name,
// MAC, MTU, addresses and routes.
type NetInterface struct {
	// BootMAC is the NIC's MAC when the VM booted: how the agent finds it.
	BootMAC string `json:"bootMac"`
	Name    string `json:"name"`
	MAC     string `json:"mac"`
	MTU     int    `json:"mtu,omitempty"`
	// Addrs are CIDRs (10.4.0.2/24, fd00::2/64).
	Addrs  []string `json:"addrs,omitempty"`
	Routes []Route  `json:"routes,omitempty"`
}

// Route is a route through a NetInterface. Dst is a CIDR (0.0.0.0/0 and
// ::/0 for defaults); without Gateway the route is on-link.
type Route struct {
	Dst     string `json:"dst"`
	Gateway string `json:"gateway,omitempty"`
	Source  string `json:"source,omitempty"`
	Metric  int    `json:"metric,omitempty"`
}

// Networker is an optional part of the Agent service: an agent that
// implements it serves Network, which moves NICs into a container's
// network namespace (its init's) and configures them there, or brings a
// NIC already there to the configuration given (a host interface renamed
// or readdressed after start).
type Networker interface {
	Network(ctx context.Context, id string, nics []NetInterface) error
}

// NetworkRemover is an optional part of the Agent service: it takes NICs
// (by BootMAC) out of a container's network namespace, unconfigured, as
// spares again, when their host interface left (docker network
// disconnect). A NIC not there is no error.
type NetworkRemover interface {
	NetworkRemove(ctx context.Context, id string, nics []NetInterface) error
}

type networkRequest struct {
	ID   string         `json:"id"`
	NICs []NetInterface `json:"nics"`
}

// Network configures nics in container id's network namespace in the
// guest (see Networker). An agent without it answers with
// codes.Unimplemented.
func (a *AgentClient) Network(ctx context.Context, id string, nics []NetInterface) error {
	b, err := json.Marshal(networkRequest{ID: id, NICs: nics})
	if err != nil {
		return err
	}
	return a.c.Call(ctx, AgentServiceName, "Network", wrapperspb.Bytes(b), &emptypb.Empty{})
}

// NetworkRemove gives container id's NICs nics back to the VM's spares
// (see NetworkRemover). An agent without it answers with
// codes.Unimplemented.
func (a *AgentClient) NetworkRemove(ctx context.Context, id string, nics []NetInterface) error {
	b, err := json.Marshal(networkRequest{ID: id, NICs: nics})
	if err != nil {
		return err
	}
	return a.c.Call(ctx, AgentServiceName, "NetworkRemove", wrapperspb.Bytes(b), &emptypb.Empty{})
}
