// trellis-cni: the CNI plugin a runtime execs for type "trellis". It hands the call (the CNI_*
// environment and stdin, byte for byte) to the node's trellis agent over a unix socket and
// prints the agent's answer, so a pod does not pay Node.js start-up. When no agent answers it
// runs the full plugin installed beside it, trellis-standalone, with the same input.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	defaultSocket = "/run/trellis/cni.sock"
	// The agent refuses larger requests; the plugin does not send them.
	maxMessage = 1 << 20
	// How long the agent gets to answer one call (a runtime's own timeout is usually longer).
	replyTimeout = 5 * time.Minute
	standalone   = "trellis-standalone"
)

type request struct {
	Env   map[string]string `json:"env"`
	Stdin string            `json:"stdin"`
}

type reply struct {
	ExitCode int    `json:"exitCode"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
}

// config holds the only keys the forwarder reads: where the agent listens, and the version
// its own errors are written in.
type config struct {
	AgentSocket string `json:"agentSocket"`
	CniVersion  string `json:"cniVersion"`
}

func main() {
	os.Exit(run())
}

func run() int {
	// VERSION needs no agent and no config: answered here, as the agent would.
	if os.Getenv("CNI_COMMAND") == "VERSION" {
		os.Stdout.WriteString(`{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}` + "\n")
		return 0
	}
	stdin, err := io.ReadAll(io.LimitReader(os.Stdin, maxMessage+1))
	if err != nil {
		return fail("", 5, fmt.Sprintf("cannot read the network configuration from stdin: %v", err))
	}
	if len(stdin) > maxMessage {
		return fail("", 7, fmt.Sprintf("the network configuration on stdin is larger than %d bytes", maxMessage))
	}
	var conf config
	_ = json.Unmarshal(stdin, &conf) // a config that does not parse is the agent's (or the fallback's) to refuse, with its message
	socket := conf.AgentSocket
	if socket == "" {
		socket = defaultSocket
	}
	conn, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		if noAgent(err) {
			return runStandalone(stdin)
		}
		return fail(conf.CniVersion, 11, fmt.Sprintf("cannot reach the trellis agent at %s: %v; try again later", socket, err))
	}
	defer conn.Close()
	env := map[string]string{}
	for _, entry := range os.Environ() {
		name, value, _ := strings.Cut(entry, "=")
		if strings.HasPrefix(name, "CNI_") || name == "PATH" {
			env[name] = value
		}
	}
	body, err := json.Marshal(request{Env: env, Stdin: string(stdin)})
	if err != nil {
		return fail(conf.CniVersion, 5, fmt.Sprintf("cannot encode the request: %v", err))
	}
	_ = conn.SetDeadline(time.Now().Add(replyTimeout))
	if err := writeFrame(conn, body); err != nil {
		return fail(conf.CniVersion, 11, fmt.Sprintf("the trellis agent at %s stopped taking the request (%v); try again later", socket, err))
	}
	answer, err := readFrame(conn)
	if err != nil {
		return fail(conf.CniVersion, 11, fmt.Sprintf("the trellis agent at %s closed the connection before answering (%v); nothing of this call was kept; try again later", socket, err))
	}
	var out reply
	if err := json.Unmarshal(answer, &out); err != nil {
		return fail(conf.CniVersion, 11, fmt.Sprintf("the trellis agent at %s answered something that is not a reply: %v", socket, err))
	}
	os.Stdout.WriteString(out.Stdout)
	os.Stderr.WriteString(out.Stderr)
	return out.ExitCode
}

// noAgent: nothing listens on the socket (never started, or gone), as opposed to an agent that
// is there but failing.
func noAgent(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOTDIR)
}

// runStandalone runs the full plugin installed beside this one (in the directory the runtime
// ran it from) with the same environment and stdin.
func runStandalone(stdin []byte) int {
	self := os.Args[0]
	if !filepath.IsAbs(self) {
		resolved, err := os.Executable()
		if err != nil {
			return fail("", 50, fmt.Sprintf("no trellis agent answers and this plugin cannot find its own path: %v", err))
		}
		self = resolved
	}
	path := filepath.Join(filepath.Dir(self), standalone)
	cmd := exec.Command(path)
	cmd.Stdin = strings.NewReader(string(stdin))
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.Env = os.Environ()
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		return fail("", 50, fmt.Sprintf("no trellis agent answers and the standalone plugin %s cannot run: %v", path, err))
	}
	return 0
}

func writeFrame(w io.Writer, body []byte) error {
	var size [4]byte
	binary.BigEndian.PutUint32(size[:], uint32(len(body)))
	if _, err := w.Write(append(size[:], body...)); err != nil {
		return err
	}
	return nil
}

func readFrame(r io.Reader) ([]byte, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(size[:])
	if n > 16*maxMessage {
		return nil, fmt.Errorf("a reply of %d bytes", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}

// fail prints a CNI error (spec's JSON on stdout, a line on stderr) and returns the exit code.
func fail(version string, code int, msg string) int {
	if version == "" {
		version = "1.1.0"
	}
	out, _ := json.Marshal(map[string]any{"cniVersion": version, "code": code, "msg": msg})
	os.Stdout.Write(append(out, '\n'))
	fmt.Fprintf(os.Stderr, "trellis: %s %s failed (code %d): %s\n", os.Getenv("CNI_COMMAND"), os.Getenv("CNI_CONTAINERID"), code, msg)
	return 1
}
