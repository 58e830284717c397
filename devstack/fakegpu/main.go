// Command corral-fake-gpu advertises a configurable number of fake devices (by default
// nvidia.com/gpu) to the kubelet through its device-plugin API (v1beta1), so pods asking for GPUs
// are scheduled and admitted by a real kubelet on a machine without GPUs, and run on the CPU.
//
// It serves the DevicePlugin service on a unix socket in the kubelet's device-plugin directory,
// registers with the kubelet there, and serves again and registers again whenever the kubelet
// restarts (a kubelet removes every plugin socket when it starts). Allocate hands each container
// the ids it was given in CORRAL_FAKE_GPUS; nothing else about a container changes.
//
// Built by scripts/build-control-plane.sh inside the Kubernetes source tree (its vendored gRPC
// and device-plugin API), cached with the kubelet.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type plugin struct {
	devices []*pluginapi.Device
	done    chan struct{}
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the devices once (they never change health) and holds the stream open until
// the plugin stops or the kubelet goes away.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	select {
	case <-p.done:
	case <-stream.Context().Done():
	}
	return nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) Allocate(_ context.Context, request *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	response := &pluginapi.AllocateResponse{}
	for _, container := range request.ContainerRequests {
		response.ContainerResponses = append(response.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"CORRAL_FAKE_GPUS": strings.Join(container.DevicesIDs, ",")},
		})
	}
	return response, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

func dialUnix(ctx context.Context, path string) (*grpc.ClientConn, error) {
	return grpc.DialContext(ctx, path, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDialer(func(address string, timeout time.Duration) (net.Conn, error) {
			return net.DialTimeout("unix", address, timeout)
		}))
}

// serve starts the DevicePlugin service on socket and returns once it answers.
func serve(p *plugin, socket string) (*grpc.Server, error) {
	if err := os.Remove(socket); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return nil, err
	}
	server := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(server, p)
	go func() { _ = server.Serve(listener) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dialUnix(ctx, socket)
	if err != nil {
		server.Stop()
		return nil, fmt.Errorf("plugin socket %s does not answer: %w", socket, err)
	}
	conn.Close()
	return server, nil
}

func register(kubeletSocket, socket, resource string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dialUnix(ctx, kubeletSocket)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(socket),
		ResourceName: resource,
	})
	return err
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func main() {
	resource := flag.String("resource", "nvidia.com/gpu", "the extended resource to advertise")
	count := flag.Int("count", 1, "how many devices to advertise")
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin directory")
	flag.Parse()
	if *count < 0 || *count > 1024 {
		log.Fatalf("--count must be between 0 and 1024, not %d", *count)
	}
	devices := make([]*pluginapi.Device, 0, *count)
	for i := 0; i < *count; i++ {
		devices = append(devices, &pluginapi.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: pluginapi.Healthy})
	}
	kubeletSocket := filepath.Join(*dir, filepath.Base(pluginapi.KubeletSocket))
	socket := filepath.Join(*dir, "corral-fake-gpu.sock")
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)

	var server *grpc.Server
	var current *plugin
	stop := func() {
		if server != nil {
			close(current.done)
			server.Stop()
			server = nil
		}
	}
	defer func() { stop(); _ = os.Remove(socket) }()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		// (Re)start and register when the socket is not there: first start, or a kubelet restart.
		if server == nil || !exists(socket) {
			stop()
			if exists(kubeletSocket) {
				current = &plugin{devices: devices, done: make(chan struct{})}
				var err error
				if server, err = serve(current, socket); err != nil {
					log.Printf("serving: %v", err)
				} else if err = register(kubeletSocket, socket, *resource); err != nil {
					log.Printf("registering with the kubelet: %v", err)
					stop()
				} else {
					log.Printf("advertising %d %s devices", *count, *resource)
				}
			}
		}
		select {
		case <-signals:
			return
		case <-ticker.C:
		}
	}
}
